"""How releases, pipelines and DORA figures read: rich tables for people, plain dicts for
`--json`. Shared by the CLI and the demo."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from orchestrator.dora import Dora
from orchestrator.release import State
from orchestrator.show import line, plain
from orchestrator.store import PipelineState, Release, Store

# Stage name → (state entered at its start, states that may end it).
STAGES: dict[str, tuple[State, tuple[State, ...]]] = {
    "build": (State.BUILDING, (State.PREPROD, State.FAILED)),
    "pre-prod": (State.PREPROD, (State.GATING, State.HALTED, State.FAILED)),
    "gates": (State.GATING, (State.READY, State.PROMOTING, State.HALTED, State.FAILED)),
    # Only a release that had to wait (a lock, or a hold on heartbeat data) reaches it.
    "door": (State.READY, (State.PROMOTING, State.HALTED, State.SUPERSEDED, State.FAILED)),
    "rollout": (State.PROMOTING, (State.LIVE, State.HALTED, State.FAILED)),
    "watch": (State.WATCHING, (State.DONE, State.ROLLED_BACK)),
}
# Every state has a style (tests/test_output.py checks it): in flight is cyan, shipped green,
# stopped yellow or red.
STATE_STYLE: dict[State, str] = {
    State.QUEUED: "dim cyan", State.BUILDING: "cyan", State.PREPROD: "cyan",
    State.GATING: "cyan", State.READY: "bold cyan", State.PROMOTING: "bold cyan",
    State.LIVE: "bold green", State.WATCHING: "green", State.DONE: "green",
    State.HALTED: "yellow", State.ROLLED_BACK: "red", State.FAILED: "red",
    State.SUPERSEDED: "dim"}


def stage_spans(release: Release) -> dict[str, tuple[datetime | None, datetime | None]]:
    """When each stage began and ended, in pipeline time (None: not reached, or not over)."""
    spans: dict[str, tuple[datetime | None, datetime | None]] = {}
    for stage, (start, ends) in STAGES.items():
        began = release.entered(start)
        ended = min((t for s in ends if (t := release.entered(s)) is not None), default=None)
        spans[stage] = (began, ended if began else None)
    return spans


def stage_seconds(release: Release) -> dict[str, float | None]:
    """Pipeline seconds spent in each stage (None: not reached, or still in it)."""
    return {stage: (ended - began).total_seconds() if began and ended else None
            for stage, (began, ended) in stage_spans(release).items()}


def release_dict(store: Store, release: Release) -> dict[str, Any]:
    return {
        "pipeline": release.pipeline, "number": release.number, "state": release.state.value,
        "sha": release.sha, "slug": release.slug.id if release.slug else None,
        "reason": release.reason, "halted_by": release.halted_by,
        "commits": [{"sha": c.sha, "author": c.author, "message": c.message,
                     "merged_at": _iso(c.merged_at)} for c in release.commits],
        "stages": {k: _iso(v) for k, v in release.stage_times.items()},
        "stage_seconds": stage_seconds(release),
        "gates": [{"gate": g.gate, "passed": g.passed, "errored": g.errored,
                   "summary": g.summary, "duration_s": g.duration_s,
                   "links": [{"title": x.title, "url": x.url} for x in g.links]}
                  for g in store.gate_results(release.id)],
    }


def pipeline_dict(state: PipelineState) -> dict[str, Any]:
    lock = state.lock
    return {
        "pipeline": state.name,
        "live": state.live.number if state.live else None,
        "in_flight": state.in_flight.number if state.in_flight else None,
        "locked": lock is not None,
        "lock": {"owner": lock.owner, "reason": lock.reason, "auto": lock.auto,
                 "since": _iso(lock.taken_at)} if lock else None,
        "rollback_running": state.rollback is not None,
        "held": state.hold_reason,
        "pending_merges": state.pending_merges,
    }


def releases_table(store: Store, releases: list[Release], title: str = "Releases") -> Table:
    """Stage durations in pipeline minutes; a gate column shows ✔/✘ per gate."""
    table = Table(title=plain(title), title_justify="left")
    for column in ("release", "state", *STAGES):
        table.add_column(column, no_wrap=True)
    table.add_column("note", overflow="fold", ratio=1)
    for release in releases:
        stages = stage_seconds(release)
        marks = "".join("✔" if g.passed else "✘" for g in store.gate_results(release.id))
        cells = {s: _minutes(stages[s]) for s in STAGES}
        cells["gates"] = f"{cells['gates']} {marks}".strip()
        authors = ", ".join(sorted({c.author for c in release.commits if c.author}))
        table.add_row(
            plain(release.name), state_text(release.state), *(plain(cells[s]) for s in STAGES),
            plain(release.reason or f"{len(release.commits)} commit(s) by {authors or '?'}"),
        )
    return table


def pipelines_table(states: list[PipelineState]) -> Table:
    table = Table(title="Pipelines", title_justify="left")
    for column in ("pipeline", "live", "in flight", "lock", "held", "queued merges"):
        table.add_column(column)
    for state in states:
        lock = state.lock
        flight = state.in_flight
        table.add_row(
            plain(state.name),
            plain(state.live.name if state.live else "-"),
            line(flight.name, " (", state_text(flight.state), ")") if flight else plain("-"),
            plain(f"🔒 {lock.owner}: {lock.reason}", "red") if lock else plain("open", "green"),
            plain(state.hold_reason or "-"),
            plain(state.pending_merges),
        )
    return table


def dora_table(figures: list[Dora]) -> Table:
    table = Table(title="DORA", title_justify="left")
    for column in ("pipeline", "days", "shipped", "per day", "lead p50", "lead p90",
                   "change failure", "restore p50"):
        table.add_column(column, justify="right")
    for f in figures:
        cells = (f.pipeline, f"{f.days:g}", f.shipped, f"{f.per_day:.1f}",
                 _min(f.lead_p50_min), _min(f.lead_p90_min),
                 "-" if f.change_failure_rate is None else f"{f.change_failure_rate:.0%}",
                 _min(f.restore_p50_min))
        table.add_row(*map(plain, cells))
    return table


def state_text(state: State | str) -> Text:
    """A release's state in its style."""
    return plain(state, STATE_STYLE.get(state, ""))  # a StrEnum key matches its string


def _minutes(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds / 60:.1f}m"


def _min(minutes: float | None) -> str:
    return "-" if minutes is None else f"{minutes:.1f}m"


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None
