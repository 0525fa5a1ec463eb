"""Telling people: every stage change of a release, every lock, rollback and stall becomes
a Notice handed to each configured Notifier (console, Slack, PagerDuty, GitHub).

A notifier that errors never fails a release: `Broadcast` catches, records and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from shiptypes import GateResult, Link

NoticeKind = Literal[
    "stage",  # a release moved to a new stage
    "halted",  # a gate failed, or the lock stopped a promotion
    "live",  # every host has started the release
    "watch_ok",  # the heartbeat stayed healthy for the whole watch
    "breach",  # the heartbeat breached
    "no_data",  # the heartbeat has no data: the next promotion is held
    "rollback",  # a rollback started or finished
    "lock",
    "unlock",
    "stall",  # too many halts in a row: page on-call
    "stall_resolved",  # a release passed its gates again
    "refused",  # a deploy was refused (locked, busy)
]


@dataclass(frozen=True)
class Notice:
    pipeline: str
    kind: NoticeKind
    text: str
    level: Literal["info", "warning", "page"] = "info"
    release_id: int | None = None
    release_number: int | None = None
    state: str | None = None
    sha: str | None = None
    authors: tuple[str, ...] = ()
    gates: tuple[GateResult, ...] = ()
    links: tuple[Link, ...] = ()
    actor: str = "ship"
    details: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Notifier(Protocol):
    name: str

    def notify(self, notice: Notice) -> None: ...
