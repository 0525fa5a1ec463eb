"""Choosing where a rollback goes: the release that was live at (now − lookback), never one
that was itself rolled back, and never the release being rolled back."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from orchestrator.release import SHIPPED
from orchestrator.store import LiveEntry


class NoRollbackTarget(Exception):
    pass


def choose_target(history: Sequence[LiveEntry], live_id: int | None, at: datetime) -> LiveEntry:
    """Walk back from what was live at `at` to the newest release still fit to serve.

    Releases that went live after `at` are skipped on purpose: when two releases overlap in
    their watch, a breach rolls back past both."""
    before = [entry for entry in history if entry.since <= at]
    if not before:
        oldest = (f" (the first release went live at {history[0].since:%H:%M:%S}Z)"
                  if history else "")
        raise NoRollbackTarget(f"nothing was live at {at:%Y-%m-%d %H:%M:%S}Z{oldest}")
    for entry in reversed(before):
        if entry.release_id != live_id and entry.state in SHIPPED:
            return entry
    raise NoRollbackTarget(
        f"no release live at or before {at:%Y-%m-%d %H:%M:%S}Z is fit to roll back to "
        "(each was rolled back, or is the release being rolled back)")
