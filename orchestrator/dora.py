"""DORA metrics from the store: deployment frequency, lead time for changes (merge → live),
change failure rate (releases that failed / releases shipped) and time to restore
(breach → rollback complete, or rollback start → complete for a rollback by hand).

A release *failed* when a rollback answered it: for an automatic rollback, the release
serving when the breach began; for one by hand, every release the person chose to undo.
An automatic rollback goes back a fixed time (the lookback), so at many releases an hour
it also undoes releases that were fine: they count as rolled back, not as failed.

Windows are half-open, (since, until], so that adjacent days never count a release twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from orchestrator.release import State
from orchestrator.store import Release, Rollback, Store

PERIODS = (1, 7, 30)  # days, as `ship dora` and the web UI show them


@dataclass(frozen=True)
class Dora:
    pipeline: str
    days: float
    shipped: int
    per_day: float
    lead_p50_min: float | None
    lead_p90_min: float | None
    change_failure_rate: float | None
    failed: int
    rolled_back: int
    restore_p50_min: float | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class History:
    """A pipeline's releases and rollbacks, read once and measured over many windows."""

    pipeline: str
    releases: Sequence[Release]
    rollbacks: Sequence[Rollback]

    @classmethod
    def read(cls, store: Store, pipeline: str) -> History:
        return cls(pipeline, store.releases(pipeline, limit=100_000),
                   store.rollbacks(pipeline, limit=100_000))

    def over(self, days: float, until: datetime) -> Dora:
        return compute(self.pipeline, self.releases, self.rollbacks,
                       until - timedelta(days=days), until)

    def daily(self, days: int, until: datetime) -> list[Dora]:
        """One figure per day, oldest first: the last day is (until − 1 day, until]."""
        return [self.over(1, until - timedelta(days=back)) for back in range(days - 1, -1, -1)]


def measure(store: Store, pipeline: str, days: float, now: datetime | None = None) -> Dora:
    return History.read(store, pipeline).over(days, now or store.now())


def compute(pipeline: str, releases: Sequence[Release], rollbacks: Sequence[Rollback],
            since: datetime, until: datetime) -> Dora:
    """Pure: the figures for releases that went live in (since, until]."""
    shipped = [r for r in releases
               if (live := r.entered(State.LIVE)) is not None and since < live <= until]
    leads = [(r.entered(State.LIVE) - c.merged_at).total_seconds() / 60
             for r in shipped for c in r.commits if c.merged_at is not None]
    rolled_back = [r for r in shipped if r.state == State.ROLLED_BACK]
    blamed = failed_releases(releases, rollbacks)
    failed = [r for r in shipped if r.id in blamed]
    restores = [(b.finished_at - (b.breach_at or b.started_at)).total_seconds() / 60
                for b in rollbacks
                if b.outcome == "done" and b.finished_at and since < b.finished_at <= until]
    days = max((until - since).total_seconds() / 86400, 1e-9)
    return Dora(
        pipeline=pipeline,
        days=round(days, 4),
        shipped=len(shipped),
        per_day=len(shipped) / days,
        lead_p50_min=quantile(leads, 0.5),
        lead_p90_min=quantile(leads, 0.9),
        change_failure_rate=len(failed) / len(shipped) if shipped else None,
        failed=len(failed),
        rolled_back=len(rolled_back),
        restore_p50_min=quantile(restores, 0.5),
    )


def failed_releases(releases: Sequence[Release], rollbacks: Sequence[Rollback]) -> set[int]:
    """Ids of the releases a rollback answered (see the module's docstring)."""
    by_id = {r.id: r for r in releases}
    went_live = sorted((live, r.number, r.id) for r in releases
                       if (live := r.entered(State.LIVE)) is not None)
    failed: set[int] = set()
    for b in rollbacks:
        if b.auto and b.breach_at is not None:
            serving = [rid for live, _, rid in went_live if live <= b.breach_at]
            failed.add(serving[-1] if serving else b.from_id)
        elif b.from_id in by_id and b.to_id in by_id:
            after, upto = by_id[b.to_id].number, by_id[b.from_id].number
            failed |= {r.id for r in releases if after < r.number <= upto
                       and r.state == State.ROLLED_BACK}
    return failed


def quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile (the ⌈q·n⌉-th smallest): always a value that was observed."""
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(round(q * len(ordered), 9))  # round: 0.9 × 10 must be rank 9, not 10
    return ordered[max(0, min(len(ordered), rank) - 1)]
