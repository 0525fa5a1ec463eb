"""DORA metrics from the store: deployment frequency, lead time for changes (merge → live),
change failure rate (releases rolled back / releases shipped) and time to restore
(breach → rollback complete, or rollback start → complete for a rollback by hand).

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
        change_failure_rate=len(rolled_back) / len(shipped) if shipped else None,
        rolled_back=len(rolled_back),
        restore_p50_min=quantile(restores, 0.5),
    )


def quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile (the ⌈q·n⌉-th smallest): always a value that was observed."""
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(round(q * len(ordered), 9))  # round: 0.9 × 10 must be rank 9, not 10
    return ordered[max(0, min(len(ordered), rank) - 1)]
