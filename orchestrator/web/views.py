"""What each page shows, read from the store (and, for the heartbeat chart, from the
pipeline's metric source), as plain objects the templates lay out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from markupsafe import Markup

from heartbeat.detector import MetricRule, bounds
from heartbeat.watcher import expectation
from heartbeat.watcher import fetch_or_no_data as fetch_safely
from orchestrator import report
from orchestrator.dora import PERIODS, Dora, History
from orchestrator.flows import localised_rule as localised  # the query as the watch ran it
from orchestrator.release import IN_FLIGHT, SHIPPED, State
from orchestrator.runtime import PipelineRuntime, Ship
from orchestrator.store import Event, PipelineState, Release, Rollback, Store
from orchestrator.web import charts
from orchestrator.web.charts import Line, Mark, Span
from shiptypes import GateResult, Series

# The stages of a release's timeline, in the order people read them.
TIMELINE = ("build", "CI", "pre-prod", "gates", "door", "rollout", "watch")
RELEASES_ON_OVERVIEW = 5
RELEASES_ON_PIPELINE = 25
DORA_DAYS = 30


# --- a release as one row: its stage timeline and durations -----------------------------


@dataclass(frozen=True)
class ReleaseRow:
    release: Release
    gates: list[GateResult]
    durations: list[tuple[str, str]]  # (stage, how long), for the stages reached
    timeline: Markup

    @property
    def authors(self) -> str:
        return ", ".join(sorted({c.author for c in self.release.commits if c.author})) or "?"


def release_row(store: Store, release: Release, ci_name: str | None, now: datetime) -> ReleaseRow:
    gates = store.gate_results(release.id)
    spans = stage_spans(release, gates, ci_name)
    origin = release.entered(State.BUILDING) or release.created_at
    until = max([now if s.end is None else s.end for s in spans], default=origin)
    durations = [(s.stage, charts.duration(((s.end or now) - s.start).total_seconds())
                  + ("…" if s.end is None else "")) for s in spans]
    chart = charts.timeline(spans, origin, until, f"{release.name} stages")
    return ReleaseRow(release, gates, durations, chart)


def stage_spans(release: Release, gates: Sequence[GateResult], ci_name: str | None) -> list[Span]:
    """build, CI (beside the build), pre-prod, gates, the wait at the door (if any), rollout
    and watch, as far as reached.
    A stage with no end is running — unless the release stopped, when it is left out."""
    stopped = release.state not in IN_FLIGHT and release.state not in (State.LIVE,
                                                                         State.WATCHING)
    spans: dict[str, Span] = {}
    for stage, (began, ended) in report.stage_spans(release).items():
        if began is not None and not (ended is None and stopped):
            spans[stage] = Span(stage, began, ended)
    ci = next((g for g in gates if g.gate == ci_name), None)
    built = release.entered(State.BUILDING)
    if ci_name and built is not None:
        if ci is not None:
            spans["CI"] = Span("CI", built, built + timedelta(seconds=ci.duration_s), lane=1)
        elif release.state in IN_FLIGHT:
            spans["CI"] = Span("CI", built, None, lane=1)
    return [spans[s] for s in TIMELINE if s in spans]


# --- a pipeline: state, lock, latest releases, where a rollback may go -------------------


@dataclass(frozen=True)
class PipelineView:
    name: str
    region: str
    state: PipelineState
    rows: list[ReleaseRow]
    targets: list[Release]  # releases a rollback may go to, newest first

    @property
    def busy(self) -> bool:
        return self.state.in_flight is not None or self.state.rollback is not None


def pipeline_view(ship: Ship, name: str, limit: int, now: datetime) -> PipelineView:
    rt = ship.pipeline(name)
    state = ship.store.pipeline_state(name)
    releases = ship.store.releases(name, limit=max(limit, RELEASES_ON_PIPELINE))
    ci_name = rt.config.ci.name if rt.config.ci else None
    rows = [release_row(ship.store, r, ci_name, now) for r in releases[:limit]]
    return PipelineView(name, rt.config.region, state, rows, rollback_targets(state, releases))


def rollback_rows(store: Store, name: str, limit: int = 10) -> list[dict[str, Any]]:
    """The latest rollbacks, naming releases by number."""
    def number(release_id: int) -> str:
        return f"#{store.release(release_id).number}"

    return [{"rollback": b, "from": number(b.from_id), "to": number(b.to_id)}
            for b in store.rollbacks(name, limit=limit)]


def rollback_targets(state: PipelineState, releases: Sequence[Release]) -> list[Release]:
    if state.live is None:
        return []
    return [r for r in releases if r.state in SHIPPED and r.id != state.live.id]


# --- a release page ----------------------------------------------------------------------


@dataclass(frozen=True)
class HeartbeatView:
    metric: str
    query: str
    chart: Markup | None
    note: str = ""


@dataclass(frozen=True)
class ReleasePage:
    pipeline: PipelineView
    row: ReleaseRow
    commits: list[dict[str, Any]]
    rollouts: list[dict[str, Any]]
    heartbeats: list[HeartbeatView]
    events: list[Event]
    rollbacks: list[Rollback]  # away from, or back to, this release
    links: list[Any] = field(default_factory=list)

    @property
    def release(self) -> Release:
        return self.row.release

    @property
    def can_roll_back_to(self) -> bool:
        return any(r.id == self.release.id for r in self.pipeline.targets)


def release_page(ship: Ship, name: str, release: Release, now: datetime) -> ReleasePage:
    rt = ship.pipeline(name)
    view = pipeline_view(ship, name, 0, now)
    ci_name = rt.config.ci.name if rt.config.ci else None
    events = ship.store.events(name, release_id=release.id, limit=500)
    rollbacks = [b for b in ship.store.rollbacks(name, limit=200)
                 if release.id in (b.from_id, b.to_id)]
    return ReleasePage(
        pipeline=view, row=release_row(ship.store, release, ci_name, now),
        commits=commit_rows(release), rollouts=rollout_rows(ship.store, release),
        heartbeats=heartbeat_views(rt, release, events, rollbacks, now), events=events,
        rollbacks=rollbacks, links=list(rt.links(release)))


def commit_rows(release: Release) -> list[dict[str, Any]]:
    live = release.entered(State.LIVE)
    return [{"sha": c.sha, "author": c.author, "message": c.message, "merged_at": c.merged_at,
             "lead": charts.duration((live - c.merged_at).total_seconds())
             if live and c.merged_at else None} for c in release.commits]


def rollout_rows(store: Store, release: Release) -> list[dict[str, Any]]:
    rows = []
    for r in store.rollouts(release.id):
        since = r.published_at
        milestones = [(label, charts.duration((at - since).total_seconds()))
                      for label, at in (("first request", r.first_request_at),
                                        ("all started", r.all_started_at), ("50%", r.half_at),
                                        ("95%", r.p95_at), ("converged", r.converged_at))
                      if at is not None]
        rows.append({"kind": r.kind, "published_at": since, "hosts": r.hosts,
                     "started": r.started, "converged": r.converged, "failed": r.failed,
                     "failures": r.failures[:10], "milestones": milestones,
                     "chart": charts.progress(r.hosts, r.started, r.converged, r.failed,
                                              f"{r.kind}: {r.converged}/{r.hosts} converged")})
    return rows


# --- the heartbeat around a release -------------------------------------------------------


def heartbeat_views(rt: PipelineRuntime, release: Release, events: Sequence[Event],
                    rollbacks: Sequence[Rollback], now: datetime) -> list[HeartbeatView]:
    """Each metric from before the release went live to the end of its watch (or a little
    past its rollback), with the baseline and threshold the watch held it to."""
    live = release.entered(State.LIVE)
    if live is None:
        return []
    hb = rt.config.heartbeat
    away = [b for b in rollbacks if b.from_id == release.id]
    end = min(max([live + timedelta(seconds=hb.watch)]
                  + [b.finished_at + timedelta(seconds=2 * hb.window)
                     for b in away if b.finished_at]), now)
    marks = [Mark("live", live, f"{release.name} live at {live:%H:%M:%S}")]
    marks += [Mark("rollback", b.finished_at, f"rolled back at {b.finished_at:%H:%M:%S} by "
                   f"{b.actor}") for b in away if b.finished_at and b.outcome == "done"]
    breaches = [e for e in events if e.kind == "breach"]
    return [_heartbeat(rt, localised(rt, rule), live, end, marks, breaches, away)
            for rule in hb.metrics]


def _heartbeat(rt: PipelineRuntime, rule: MetricRule, live: datetime, end: datetime,
               marks: list[Mark], breaches: Sequence[Event],
               away: Sequence[Rollback]) -> HeartbeatView:
    step = rt.config.heartbeat.window
    before = rule.baseline.window if rule.baseline.kind == "trailing" else rt.config.heartbeat.watch
    start = live - timedelta(seconds=min(before, 2 * rt.config.heartbeat.watch))
    series = fetch_safely(rt.source, rule.query, start, end, step)
    if series.no_data:
        return HeartbeatView(rule.name, rule.query, None,
                             f"no data: {series.error or 'the source returned no points'}")
    observed = Series(tuple(p for p in series.points if p.at >= live))
    # The baseline the watch judged against: the rule's own, or its trailing fallback.
    expected = expectation(rt.source, rule, observed, live, end, step)
    level = [(p.at, b) for p, b in zip(observed.points, expected.values, strict=False)
             if b is not None]
    lines = [Line("observed", [(p.at, p.value) for p in series.points], f"{rule.name} observed"),
             Line("baseline", level, f"baseline ({expected.note or rule.baseline.kind})"),
             Line("threshold", [(t, bounds(rule, b)[0]) for t, b in level],
                  f"breach below {rule.min_ratio:.0%} of baseline, or lower where the "
                  "baseline is noisy")]
    if rule.max_ratio is not None:
        lines.append(Line("threshold", [(t, bounds(rule, b)[1]) for t, b in level],
                          f"breach above {rule.max_ratio:g}× baseline, or higher where the "
                          "baseline is noisy"))
    marked = [*marks, *(_breach_mark(e, away) for e in breaches
                        if e.data.get("metric") == rule.name)]
    chart = charts.heartbeat(lines, marked, start, end, rule.name)
    note = "" if level else "no baseline to compare with"
    return HeartbeatView(rule.name, rule.query, chart, note)


def _breach_mark(event: Event, away: Sequence[Rollback]) -> Mark:
    data = event.data
    at = next((b.breach_at for b in away if b.auto and b.breach_at), None) or event.at
    label = (f"breach at {at:%H:%M:%S}: {data.get('observed', 0):,.0f}/min vs baseline "
             f"{data.get('baseline', 0):,.0f}/min (threshold {data.get('threshold', 0):,.0f}/min)")
    return Mark("breach", at, label, value=data.get("observed"))


# --- DORA ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DoraView:
    pipeline: str
    region: str
    figures: list[Dora]  # one per period in PERIODS
    charts: list[tuple[str, Markup]]


def dora_view(ship: Ship, name: str, now: datetime) -> DoraView:
    history = History.read(ship.store, name)
    daily = history.daily(DORA_DAYS, now)
    days = [f"{(now - timedelta(days=DORA_DAYS - 1 - i)):%b %d}" for i in range(DORA_DAYS)]

    def chart(title: str, values: list[float | None], show: str, kind: str) -> tuple[str, Markup]:
        titles = [f"{day}: " + ("–" if v is None else show.format(v))
                  for day, v in zip(days, values, strict=True)]
        return title, charts.bars(values, titles, f"{name}: {title}, last {DORA_DAYS} days", kind)

    return DoraView(name, ship.config.pipeline(name).region,
                    [history.over(days_back, now) for days_back in PERIODS], [
        chart("deployments per day", [float(d.shipped) for d in daily], "{:.0f} shipped",
              "deploys"),
        chart("lead time p50 (min)", [d.lead_p50_min for d in daily], "{:.1f} min", "lead"),
        chart("change failure rate", [None if d.change_failure_rate is None
                                      else d.change_failure_rate * 100 for d in daily],
              "{:.0f}%", "failure"),
        chart("time to restore p50 (min)", [d.restore_p50_min for d in daily], "{:.1f} min",
              "restore"),
    ])
