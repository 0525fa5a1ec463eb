"""DORA metrics from the store: deployment frequency, lead time for changes (merge → live),
change failure rate (releases rolled back / releases shipped) and time to restore
(breach → rollback complete, or rollback start → complete for a rollback by hand)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from orchestrator.release import State
from orchestrator.store import Release, Rollback, Store


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


def measure(store: Store, pipeline: str, days: float, now: datetime | None = None) -> Dora:
    now = now or store.now()
    return compute(pipeline, store.releases(pipeline, limit=100_000),
                   store.rollbacks(pipeline, limit=100_000), now - timedelta(days=days), now)


def compute(pipeline: str, releases: Sequence[Release], rollbacks: Sequence[Rollback],
            since: datetime, until: datetime) -> Dora:
    """Pure: the figures for releases that went live in [since, until]."""
    shipped = [r for r in releases
               if (live := r.entered(State.LIVE)) is not None and since <= live <= until]
    leads = [(r.entered(State.LIVE) - c.merged_at).total_seconds() / 60
             for r in shipped for c in r.commits if c.merged_at is not None]
    rolled_back = [r for r in shipped if r.state == State.ROLLED_BACK]
    restores = [(b.finished_at - (b.breach_at or b.started_at)).total_seconds() / 60
                for b in rollbacks
                if b.outcome == "done" and b.finished_at and since <= b.finished_at <= until]
    days = max((until - since).total_seconds() / 86400, 1e-9)
    return Dora(
        pipeline=pipeline,
        days=round(days, 4),
        shipped=len(shipped),
        per_day=len(shipped) / days,
        lead_p50_min=_quantile(leads, 0.5),
        lead_p90_min=_quantile(leads, 0.9),
        change_failure_rate=len(rolled_back) / len(shipped) if shipped else None,
        rolled_back=len(rolled_back),
        restore_p50_min=_quantile(restores, 0.5),
    )


def _quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile: always a value that was observed."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.999999) - 1))]
