"""A workday at full pace: merges arrive all day through the GitHub intake and ship on the
simulated pipeline, in scaled time, through the real flows, store and Prefect engine.

Merges arrive as a Poisson process (default 180 in 8 hours, one burst hour at twice the
rate). Stages take their simulated time with jitter: build 4 min, CI up to 5 min beside
it, pre-prod 2 min, gates about 1 min, rollout (first request about 2 min after promotion,
every host within 6), watch 20 min. A small share of releases fail a gate (3%) or break the
heartbeat (0.5%: about once a day); an on-call person unlocks the pipeline some minutes
after each automatic rollback. Two policies run side by side on the same merges: the
release train, and a serial policy (one commit per release, each waiting for the previous
watch to end).

    .venv/bin/python bench/day.py                  # 8 hours at ×30: about 18 minutes
    .venv/bin/python bench/day.py --quick          # 1 hour at ×120: about a minute
    .venv/bin/python bench/day.py --hours 2 --speed 20   # slower clock, less overhead
    .venv/bin/python bench/day.py --no-serial --breach 0.03   # a stress test: ~5 breaches
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.release_overhead import INSTANT
from orchestrator import config, dora
from orchestrator.intake import GitHubIntake, signature
from orchestrator.release import SHIPPED, State
from orchestrator.runner import Runner
from orchestrator.runtime import Ship, use
from orchestrator.store import PipelineState, Release, Store
from shiptypes import Clock, Commit, ScaledClock, WallClock

TRAIN, SERIAL = "train", "serial"
CALIBRATION = "bench"  # the pipeline of bench/release_overhead.py
REPO, BRANCH = "example/chat", "main"
# A Monday morning: the simulated heartbeat's daily swing depends on the hour.
DAY_START = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)
AUTHORS = ("ann", "bob", "carol", "dave", "erin", "femi", "gus", "hana")

PIPELINES = """
version: 1
x-day: &day
  repo: {{name: {repo}, branch: {branch}}}
  build: {{type: sim, duration: 4m, jitter: 0.15}}
  ci: {{type: sim, name: ci, duration: 4m, jitter: 0.25}}         # 3 to 5 min, beside the build
  gates:
    - {{type: sim, name: boot, duration: 20s, jitter: 0.2}}
    - {{type: sim, name: synthetics, duration: 1m, jitter: 0.2, fail_share: {gate_fail},
       seed: {seed}}}
  preprod:
    name: preprod
    fleet: {{driver: sim, hosts: 1, fetch: 40s, seed: {seed}}}   # 40 s + 4 workers × 20 s
    timeout: 10m
  fleet: {{driver: sim, hosts: {hosts}, seed: {seed}}}              # rollout/sim.py's timings
  rollout: {{stagger: 2m, max_failed_share: 0.05}}
  heartbeat:
    source: {{type: sim, rate_per_min: 1030, breach_share: {breach}, seed: {seed}}}
    window: 1m
    watch: 20m
    metrics:
      - name: messages_created
        query: "sum:chat.messages.created{{region:{{region}}}}.as_count()"
        baseline: {{kind: trailing, window: 30m}}
        min_ratio: 0.6
        windows: 3
        min_volume: 50
  rollback: {{auto: true, lookback_minutes: {lookback}}}
  stall: {{halts: 3}}
  notify: {{console: false}}
pipelines:
  {train}: {{<<: *day, region: day-train, train: {{max_commits: 50, in_flight: {in_flight}}}}}
  {serial}: {{<<: *day, region: day-serial, train: {{max_commits: 1}}}}
"""


@dataclass(frozen=True)
class Options:
    hours: float = 8.0
    merges: float = 180.0  # in `hours`, before the burst
    burst_hour: float | None = 4.0  # the hour (from the start) at twice the rate
    speed: float = 30.0
    seed: int = 1
    hosts: int = 300
    gate_fail: float = 0.03
    # 99.8% availability leaves ~3 min of downtime a day, and a breach is ~5 min degraded
    # until rolled back: a pipeline that keeps it breaks the heartbeat about once a day.
    breach: float = 0.005
    unlock_after_min: float = 15.0
    lookback_min: float = 20.0
    redeliver: float = 0.03  # share of pushes GitHub delivers twice
    calibration_releases: int = 6
    serial: bool = True
    in_flight: int = 12  # the train's releases in flight at once, each with its own pre-prod

    def pipelines_yaml(self) -> str:
        return PIPELINES.format(repo=REPO, branch=BRANCH, seed=self.seed, hosts=self.hosts,
                                gate_fail=self.gate_fail, breach=self.breach,
                                lookback=self.lookback_min, train=TRAIN, serial=SERIAL,
                                in_flight=self.in_flight)


# --- merges in, through the GitHub intake ------------------------------------------------


@dataclass(frozen=True)
class Merge:
    at_s: float  # pipeline seconds after the start of the day
    sha: str
    author: str
    redelivered: bool


def merge_plan(options: Options) -> list[Merge]:
    """Poisson arrivals: `merges` per `hours`, twice that rate in the burst hour."""
    draw = random.Random(f"merges/{options.seed}")
    rate = options.merges / (options.hours * 3600)  # per pipeline second
    burst = options.burst_hour
    plan, at, n = [], 0.0, 0
    while True:
        hour = at / 3600
        at += draw.expovariate(rate * (2 if burst is not None and burst <= hour < burst + 1
                                       else 1))
        if at >= options.hours * 3600:
            return plan
        sha = hashlib.sha1(f"{options.seed}/{n}".encode()).hexdigest()
        plan.append(Merge(at, sha, draw.choice(AUTHORS), draw.random() < options.redeliver))
        n += 1


class Pushes:
    """Signs and posts push events to the intake as GitHub would: one merge commit per push,
    some delivered twice (a retried webhook)."""

    def __init__(self, intake: GitHubIntake, secret: str) -> None:
        self.intake = intake
        self.secret = secret
        self.sent: dict[str, datetime] = {}  # sha → when it was pushed (pipeline time)
        self.answers: Counter[str] = Counter()

    async def push(self, merge: Merge, clock: Clock) -> None:
        body = json.dumps({
            "ref": f"refs/heads/{BRANCH}", "repository": {"full_name": REPO},
            "commits": [{"id": merge.sha, "author": {"username": merge.author},
                         "message": f"Merge pull request from {merge.author}"}],
        }).encode()
        headers = {"x-hub-signature-256": signature(self.secret, body),
                   "x-github-event": "push", "x-github-delivery": str(uuid.uuid4())}
        self.sent[merge.sha] = clock.now()
        for _ in range(2 if merge.redelivered else 1):
            status, answer = await self.intake.handle(body, headers)
            duplicates = sum(p.get("duplicate", 0) for p in answer.get("pipelines", {}).values())
            self.answers[f"{status} duplicate" if duplicates else str(status)] += 1


async def merges_all_day(plan: Sequence[Merge], pushes: Pushes, clock: Clock,
                         start: datetime) -> None:
    for merge in plan:
        ahead = merge.at_s - (clock.now() - start).total_seconds()
        if ahead > 0:
            await clock.wait(ahead)
        await pushes.push(merge, clock)


# --- the two policies, and the person on call -------------------------------------------------


class DayRunner(Runner):
    """The release train on every pipeline but those in `serial`, which ship one release
    at a time and start the next only when the previous watch has ended."""

    def __init__(self, ship: Ship, serial: Iterable[str] = ()) -> None:
        super().__init__(ship)
        self.serial = set(serial)
        self.closing = False  # the day is over: the serial policy starts nothing new

    async def _train(self, pipeline: str, actor: str) -> None:
        if pipeline not in self.serial:
            return await super()._train(pipeline, actor)
        while pipeline in self._dirty and not self.closing:
            self._dirty.discard(pipeline)
            while not self.closing and (await self.ship_next(pipeline, actor,
                                                             watch=True)).started:
                pass
        return None

    async def serial_done(self) -> None:
        self.closing = True
        await asyncio.gather(*(self._trains[name] for name in self.serial
                               if name in self._trains), return_exceptions=True)


async def on_call(runner: Runner, pipelines: Sequence[str], unlock_after_min: float) -> None:
    """The person on call: looks at an automatic rollback and unlocks the pipeline
    `unlock_after_min` minutes after it locked, then lets the queued merges ship."""
    store, clock = runner.ship.store, runner.ship.clock
    while True:
        for pipeline in pipelines:
            lock = store.pipeline_state(pipeline).lock
            if lock is None or not lock.auto:
                continue
            if (clock.now() - lock.taken_at).total_seconds() >= unlock_after_min * 60:
                store.unlock(pipeline, "on-call", f"looked at the rollback ({lock.reason}): "
                             "the bad change is reverted")
                runner.kick(pipeline, actor="on-call")
        await clock.wait(15)


async def until_drained(runner: Runner, pipeline: str, clock: Clock, day_end: datetime) -> None:
    """Wait until the day is over, every merge has shipped and every watch ended, and the
    pipeline is unlocked: a rollback at the end of the day locks it after the last merge
    went out, and the person on call unlocks it minutes later."""
    store = runner.ship.store
    while True:
        if clock.now() >= day_end and _drained(store.pipeline_state(pipeline)):
            await runner.settle(pipeline)
            if _drained(store.pipeline_state(pipeline)):
                return
        await clock.wait(30)


def _drained(state: PipelineState) -> bool:
    return (state.pending_merges == 0 and state.in_flight is None and state.rollback is None
            and state.lock is None)


# --- engine overhead ---------------------------------------------------------------------


@dataclass(frozen=True)
class Overhead:
    to_live_s: list[float]  # real seconds, merge → live, with zero-length stages
    flow_s: list[float]  # real seconds for the release flow to return

    @property
    def per_release(self) -> float:
        return statistics.median(self.to_live_s)


async def calibrate(hosts: int, workdir: Path, releases: int) -> Overhead:
    """Releases whose stages take no time (bench/release_overhead.py's pipeline): what the
    engine itself costs per release. The first also starts Prefect's temporary API, and is
    left out."""
    store = Store(f"sqlite:///{workdir}/calibrate.db", WallClock())
    ship = Ship(config.parse(INSTANT.format(hosts=hosts)), store, notifiers=[])
    runner = Runner(use(ship))
    to_live, flows = [], []
    for n in range(releases + 1):
        commit = Commit(uuid.uuid4().hex + f"{n:08x}", "bench", "calibration",
                        ship.clock.now())
        began = time.perf_counter()
        outcome = await runner.deploy(CALIBRATION, [commit], "bench", watch=False)
        took = time.perf_counter() - began
        await runner.settle(CALIBRATION)
        release = ship.store.release(outcome.release.id)
        if outcome.state != State.LIVE:
            raise RuntimeError(f"calibration release ended {outcome.state}: {release.reason}")
        if n:
            to_live.append((release.entered(State.LIVE) - commit.merged_at).total_seconds())
            flows.append(took)
    store.close()
    return Overhead(to_live, flows)


# --- the day -----------------------------------------------------------------------------


@dataclass
class Day:
    options: Options
    store: Store
    plan: list[Merge]
    pushes: Pushes
    start: datetime
    day_end: datetime
    end: datetime
    real_s: float
    overhead: Overhead | None
    pipelines: list[str]
    breaks: dict[str, set[int]] = field(default_factory=dict)  # releases that broke it


async def run_day(options: Options, workdir: Path, calibrate_first: bool = True,
                  clock: Clock | None = None) -> Day:
    """The day, in time scaled by `options.speed` unless a `clock` starting at DAY_START is
    given (a test's, which stands still while the engine works)."""
    loaded = config.parse(options.pipelines_yaml())
    overhead = None
    if calibrate_first:
        overhead = await calibrate(options.hosts, workdir, options.calibration_releases)
    pipelines = [TRAIN, SERIAL] if options.serial else [TRAIN]
    plan = merge_plan(options)
    clock = clock or ScaledClock(options.speed, DAY_START)
    store = Store(f"sqlite:///{workdir}/day.db", clock)
    ship = use(Ship(loaded, store, clock, notifiers=[]))
    runner = DayRunner(ship, serial=[SERIAL])
    secret = secrets.token_hex(16)
    pushes = Pushes(GitHubIntake(ship, runner, secret), secret)
    day_end = DAY_START + timedelta(hours=options.hours)
    began = time.perf_counter()
    for name in pipelines:
        ship.pipeline(name)  # build every runtime before the first merge arrives
    merging = asyncio.create_task(merges_all_day(plan, pushes, clock, DAY_START))
    person = asyncio.create_task(on_call(runner, pipelines, options.unlock_after_min))
    try:
        await until_drained(runner, TRAIN, clock, day_end)
        await merging
        await runner.serial_done()
        for name in pipelines:
            await runner.settle(name)
    finally:
        person.cancel()
        merging.cancel()
    breaks = {name: {r.number for r in store.releases(name, limit=100_000)
                     if ship.pipeline(name).source.breaks(r.number)} for name in pipelines}
    return Day(options, store, plan, pushes, DAY_START, day_end, clock.now(),
               time.perf_counter() - began, overhead, pipelines, breaks)


# --- figures -------------------------------------------------------------------------------


def q(values: Sequence[float], share: float) -> float | None:
    return dora.quantile(values, share)


@dataclass
class Delivery:
    """When one merge reached customers: every host started a release carrying its code
    (its own release, or a later one when its own was halted: releases build from main)."""

    sha: str
    merged_at: datetime
    own: Release | None
    live_at: datetime | None  # None: still waiting when the day was measured
    first_request_at: datetime | None
    queued_at: datetime | None
    locked_s: float  # of the wait, seconds the pipeline was locked


@dataclass
class Figures:
    pipeline: str
    releases: list[Release]
    deliveries: list[Delivery]
    shipped: list[Release]  # went live through a promotion
    end: datetime
    locks: list[tuple[datetime, datetime, str]]
    rollbacks: list[str]
    problems: list[str]
    dora: dora.Dora
    restores_min: list[float]

    def lead_min(self, locked: bool | None = None, censored: bool = True) -> list[float]:
        """Lead times of every merge, or only of those whose wait a lock touched (`locked`
        True) or did not (False)."""
        leads = []
        for d in self.deliveries:
            until = d.live_at or (self.end if censored else None)
            if until is not None and locked in (None, d.locked_s > 0):
                leads.append((until - d.merged_at).total_seconds() / 60)
        return leads

    @property
    def waiting(self) -> int:
        return sum(1 for d in self.deliveries if d.live_at is None)

    def held(self) -> Counter[str]:
        """Merges not live at the end whose release stopped (a failed gate, a lock): they
        ship with the next merge's release, as releases build from the branch."""
        return Counter(d.own.name for d in self.deliveries
                       if d.live_at is None and d.own is not None)

    @property
    def queued(self) -> int:
        """Merges in no release at the end."""
        return sum(1 for d in self.deliveries if d.own is None)

    def censored(self, share: float) -> bool:
        """Whether the quantile is a lower bound (merges still waiting count at `end`)."""
        delivered = sorted(self.lead_min(censored=False))
        rank = math.ceil(share * len(self.deliveries))
        return self.waiting > 0 and rank > len(delivered)


def figures(day: Day, pipeline: str) -> Figures:
    store = day.store
    releases = sorted(store.releases(pipeline, limit=100_000), key=lambda r: r.number)
    history = store.live_history(pipeline)
    promoted = [e for e in history if e.via == "promote"]
    locks = [(lock.taken_at, lock.released_at or day.end, lock.reason)
             for lock in store.locks(pipeline, limit=10_000)]
    by_sha: dict[str, list[Release]] = {}
    for release in releases:
        for commit in release.commits:
            by_sha.setdefault(commit.sha, []).append(release)
    deliveries = [_delivery(store, merge, day.pushes.sent[merge.sha], by_sha.get(merge.sha, []),
                            promoted, locks, day.end) for merge in day.plan]
    shipped = [r for r in releases if any(e.release_id == r.id for e in promoted)]
    problems = _problems(day, releases, by_sha, shipped, drained=pipeline == TRAIN)
    rollbacks = store.rollbacks(pipeline, limit=10_000)
    restores = [((b.finished_at - (b.breach_at or b.started_at)).total_seconds() / 60)
                for b in rollbacks if b.outcome == "done" and b.finished_at]
    measured = dora.compute(pipeline, releases, rollbacks, day.start - timedelta(seconds=1),
                            day.end)
    return Figures(pipeline, releases, deliveries, shipped, day.end, locks,
                   _explain_rollbacks(day, pipeline, releases, rollbacks, history),
                   problems, measured, restores)


def _delivery(store: Store, merge: Merge, sent: datetime, carriers: list[Release],
              promoted: list, locks: list[tuple[datetime, datetime, str]],
              end: datetime) -> Delivery:
    own = carriers[-1] if carriers else None
    merged_at = next((c.merged_at for c in own.commits if c.sha == merge.sha), sent) if own \
        else sent
    live = next((e for e in promoted if own is not None and e.number >= own.number), None)
    first = None
    if live is not None:
        rollout = next((r for r in store.rollouts(live.release_id) if r.kind == "promote"), None)
        first = rollout.first_request_at if rollout else None
    live_at = live.since if live else None
    until = live_at or end
    locked = sum(max(0.0, (min(unlocked, until) - max(taken, merged_at)).total_seconds())
                 for taken, unlocked, _ in locks)
    return Delivery(merge.sha, merged_at, own, live_at, first,
                    own.entered(State.QUEUED) if own else None, locked)


def _problems(day: Day, releases: list[Release], by_sha: dict[str, list[Release]],
              shipped: list[Release], drained: bool) -> list[str]:
    """Merges lost (in no release once the pipeline drained) or shipped twice (in two
    releases that reached the fleet), and releases left half-way."""
    problems = []
    shipped_ids = {r.id for r in shipped}
    for merge in day.plan:
        carriers = by_sha.get(merge.sha, [])
        if drained and not carriers:
            problems.append(f"{merge.sha[:7]} lost: in no release")
        twice = [r for r in carriers if r.id in shipped_ids]
        if len(twice) > 1:
            problems.append(f"{merge.sha[:7]} shipped twice: "
                            f"{', '.join(r.name for r in twice)}")
    stuck = [r for r in releases if r.state not in SHIPPED | {
        State.HALTED, State.FAILED, State.ROLLED_BACK, State.SUPERSEDED}]
    problems += [f"{r.name} left {r.state}" for r in stuck]
    return problems


def _explain_rollbacks(day: Day, pipeline: str, releases: list[Release], rollbacks: list,
                       history: list) -> list[str]:
    by_id = {r.id: r for r in releases}
    lines = []
    for b in sorted(rollbacks, key=lambda b: b.started_at):
        serving = [e.number for e in history if b.breach_at and e.since <= b.breach_at]
        culprit = serving[-1] if serving else None
        bad = culprit in day.breaks.get(pipeline, set())
        undone = sorted(r.number for r in releases if r.state == State.ROLLED_BACK
                        and (r.reason or "").endswith(f"#{by_id[b.to_id].number}")
                        and r.entered(State.ROLLED_BACK) and b.finished_at
                        and abs((r.entered(State.ROLLED_BACK) - b.finished_at)
                                .total_seconds()) < 1)
        restore = ((b.finished_at - (b.breach_at or b.started_at)).total_seconds() / 60
                   if b.finished_at else None)
        lines.append(
            f"{_clock(b.started_at)} {by_id[b.from_id].name} → #{by_id[b.to_id].number} by "
            f"{b.actor} ({'auto' if b.auto else 'by hand'}, {b.outcome}"
            + (f", restored in {restore:.1f} min" if restore is not None else "") + "): "
            + f"{b.reason}. Serving at the breach: #{culprit}"
            + (" (a release the simulation made bad)" if bad else " (NOT one made bad)")
            + (f"; undone: {', '.join(f'#{n}' for n in undone)}" if undone else ""))
    return lines


def _clock(at: datetime) -> str:
    return at.strftime("%H:%M")


# --- printing ------------------------------------------------------------------------------


def fmt(value: float | None, unit: str = "", bound: bool = False) -> str:
    if value is None:
        return "–"
    return f"{'≥' if bound else ''}{value:.1f}{unit}"


def critical_path_min(releases: Sequence[Release], build_s: float) -> float | None:
    """The critical path of one release, in minutes: its build (as configured: a build
    done ahead leaves no trace in the release's stages), then the median pre-prod, gates
    (CI included) and rollout until every host started. A merge that never waits for the
    pipeline, on an engine that costs nothing, is live after this long."""
    steps = stage_medians(releases)
    later = [steps[name] for name in ("pre-prod", "gates+CI", "rollout to all started")]
    if None in later:
        return None
    return (build_s + sum(later)) / 60  # type: ignore[arg-type]


def stage_medians(releases: Sequence[Release]) -> dict[str, float | None]:
    """Median pipeline seconds of each step of shipped releases."""
    steps = [(State.QUEUED, State.BUILDING, "flow start"), (State.BUILDING, State.PREPROD,
             "build"), (State.PREPROD, State.GATING, "pre-prod"),
             (State.GATING, State.PROMOTING, "gates+CI"), (State.PROMOTING, State.LIVE,
                                                          "rollout to all started")]
    out: dict[str, float | None] = {}
    for start, end, name in steps:
        spans = [(r.entered(end) - r.entered(start)).total_seconds() for r in releases
                 if r.entered(start) and r.entered(end)]
        out[name] = statistics.median(spans) if spans else None
    return out


def idle_gaps_s(releases: Sequence[Release],
                locks: Sequence[tuple[datetime, datetime, str]]) -> list[float]:
    """Pipeline seconds from a release freeing the pipeline to the next one claiming it,
    when merges were already waiting and no lock held them: the engine's own time between
    two releases."""
    ordered = sorted(releases, key=lambda r: r.number)
    gaps = []
    for before, after in pairwise(ordered):
        freed = min((t for s in (State.LIVE, State.HALTED, State.FAILED)
                     if (t := before.entered(s)) is not None), default=None)
        oldest = min((c.merged_at for c in after.commits if c.merged_at), default=None)
        claimed = after.entered(State.QUEUED)
        if not (freed and oldest and claimed) or oldest >= freed:
            continue
        if not any(taken < claimed and freed < unlocked for taken, unlocked, _ in locks):
            gaps.append((claimed - freed).total_seconds())
    return gaps


def report(day: Day) -> dict[str, Figures]:
    o = day.options
    seen = {name: figures(day, name) for name in day.pipelines}
    train = seen[TRAIN]
    print(f"\nA workday at ×{o.speed:g}: {o.hours:g} h, {len(day.plan)} merges "
          f"({o.merges:g} per {o.hours:g} h"
          + (f", hour {o.burst_hour:g}–{o.burst_hour + 1:g} at twice the rate"
             if o.burst_hour is not None and o.burst_hour < o.hours else "")
          + f"), {o.hosts} hosts, gate failures {o.gate_fail:.0%}, heartbeat breaches "
          f"{o.breach:.1%}, unlock {o.unlock_after_min:g} min after an auto-rollback")
    print(f"simulated {(day.end - day.start).total_seconds() / 3600:.2f} h in "
          f"{day.real_s / 60:.1f} real min; intake answers: "
          f"{', '.join(f'{k}×{v}' for k, v in sorted(day.pushes.answers.items()))}")
    if day.overhead:
        per = day.overhead.per_release
        print(f"engine overhead per release (zero-length stages, real time): merge → live "
              f"median {per:.2f} s, p95 {q(day.overhead.to_live_s, 0.95):.2f} s = "
              f"{per * o.speed:.0f} simulated s at ×{o.speed:g} "
              f"({per * o.speed / 60:.0%} of a simulated minute)")
    build_s = config.parse(o.pipelines_yaml()).pipeline(TRAIN).build.duration
    for name, fig in seen.items():
        _print_policy(fig, "release train" if name == TRAIN else "serial (1 commit, "
                      "after the previous watch)", build_s, one_track=o.in_flight == 1)
    if SERIAL in seen:
        _print_ratios(train, seen[SERIAL])
    _print_targets(train, build_s, day)
    return seen


def _print_policy(fig: Figures, title: str, build_s: float, one_track: bool) -> None:
    releases, shipped = fig.releases, fig.shipped
    halts = Counter(r.halted_by or "?" for r in releases if r.state == State.HALTED)
    leads, free, waited = fig.lead_min(), fig.lead_min(locked=False), fig.lead_min(locked=True)
    first = [(d.first_request_at - d.merged_at).total_seconds() / 60 for d in fig.deliveries
             if d.first_request_at]
    waits = [(d.queued_at - d.merged_at).total_seconds() / 60 for d in fig.deliveries
             if d.queued_at and d.own and d.own in shipped]
    per_release = [len(r.commits) for r in shipped]
    cp = critical_path_min(shipped, build_s)
    locked = sum((end - start).total_seconds() for start, end, _ in fig.locks) / 60
    b = fig.censored
    print(f"\n── {fig.pipeline}: {title}")
    print(f"releases: {len(releases)} started, {len(shipped)} shipped, "
          f"{fig.dora.rolled_back} rolled back, halted {dict(halts) or 0}, "
          f"{sum(r.state == State.FAILED for r in releases)} failed; merges per shipped "
          f"release {fmt(statistics.fmean(per_release) if per_release else None)} "
          f"(max {max(per_release, default=0)})")
    held = fig.held()
    print(f"merges: {len(fig.deliveries)}, reached customers {len(fig.deliveries) - fig.waiting}"
          + (f"; not live at the end {fig.waiting}, lead time counted to the end (≥: a lower "
             "bound): " if fig.waiting else "")
          + ", ".join([f"{fig.queued} still queued"] * bool(fig.queued)
                      + [f"{n} in {name} (halted: they ship with the next merge)"
                         for name, n in held.items()]))
    print(f"lead time merge → live (min): p50 {fmt(q(leads, .5), bound=b(.5))}  "
          f"p95 {fmt(q(leads, .95), bound=b(.95))}  max {fmt(max(leads, default=None))}")
    print(f"  the {len(free)} merges no lock touched: p50 {fmt(q(free, .5))} p95 "
          f"{fmt(q(free, .95))} max {fmt(max(free, default=None))};  the {len(waited)} that "
          f"waited on a lock: p50 {fmt(q(waited, .5))} max {fmt(max(waited, default=None))}")
    print(f"merge → first customer request (min): p50 {fmt(q(first, .5))}  "
          f"p95 {fmt(q(first, .95))}  max {fmt(max(first, default=None))}")
    print(f"  of which waiting for the pipeline (merge → release claimed): p50 "
          f"{fmt(q(waits, .5))} p95 {fmt(q(waits, .95))};  critical path of one release "
          f"(build {build_s / 60:g} + median pre-prod, gates, rollout): {fmt(cp)} min")
    gaps = idle_gaps_s(releases, fig.locks)  # single track: one release frees the next
    print("  median step (simulated s): " + ", ".join(
        f"{k} {fmt(v)}" for k, v in stage_medians(shipped).items())
        + (f"; pipeline free → next claimed while merges wait: p50 {fmt(q(gaps, .5))} "
           f"p95 {fmt(q(gaps, .95))}" if fig.pipeline == TRAIN and one_track else ""))
    cfr = fig.dora.change_failure_rate
    print(f"change failure rate {fmt(cfr * 100 if cfr is not None else None, '%')} "
          f"({fig.dora.failed}/{len(shipped)} shipped releases failed; "
          f"{fig.dora.rolled_back} rolled back, the rest by the lookback); "
          f"time to restore (breach → rolled back, min): p50 {fmt(q(fig.restores_min, .5))} "
          f"max {fmt(max(fig.restores_min, default=None))}; locked {locked:.0f} min in "
          f"{len(fig.locks)} lock(s)")
    for line in fig.rollbacks:
        print(f"  rollback {line}")
    print("no merge lost or shipped twice: " + ("yes" if not fig.problems else
                                               "NO: " + "; ".join(fig.problems[:5])))


def _print_ratios(train: Figures, serial: Figures) -> None:
    print("\n── release train vs serial")

    def ratio(name: str, a: float | None, b: float | None, bound: bool = False) -> None:
        if a and b:
            print(f"{name:<34} train {a:8.1f}   serial {'≥' if bound else ' '}{b:8.1f}   "
                  f"serial/train {'≥' if bound else ''}{b / a:.2f}")

    ratio("releases shipped", len(train.shipped), len(serial.shipped))
    ratio("merges that reached customers", len(train.deliveries) - train.waiting,
          len(serial.deliveries) - serial.waiting)
    for share, label in ((.5, "p50"), (.95, "p95")):
        ratio(f"lead time merge → live {label} (min)", q(train.lead_min(), share),
              q(serial.lead_min(), share), serial.censored(share))
    ratio("lead time max (min)", max(train.lead_min(), default=None),
          max(serial.lead_min(), default=None), serial.waiting > 0)


def _print_targets(train: Figures, build_s: float, day: Day) -> None:
    leads = train.lead_min()
    cp, p50, p95 = critical_path_min(train.shipped, build_s), q(leads, .5), q(leads, .95)
    print("\n── targets (release train)")
    if cp and p50:
        engine = (f"; the engine's own cost is about "
                  f"{day.overhead.per_release * day.options.speed / 60:.1f} min of it"
                  if day.overhead else "")
        print(f"p50 lead time within 2% of the critical path: {p50:.1f} vs {cp:.1f} min "
              f"({p50 / cp - 1:+.0%}{engine}) {'✔' if p50 <= 1.02 * cp else '✘'}")
    free = q(train.lead_min(locked=False), .95)
    if p95:
        print(f"p95 lead time ≤ 15 min: {p95:.1f} min {'✔' if p95 <= 15 else '✘'}"
              + (f"; of the merges no lock touched: {free:.1f} min {'✔' if free <= 15 else '✘'}"
                 f" ({len(train.lead_min(locked=True))} waited on a lock until on-call "
                 "unlocked it)" if free and train.locks else ""))
    print(f"no merge lost or shipped twice: {'✘' if train.problems else '✔'}")
    print(f"rollbacks counted and explained: {len(train.rollbacks)} "
          f"{'✔' if all('Serving at the breach' in x for x in train.rollbacks) else '✘'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, help="length of the day (default 8)")
    parser.add_argument("--merges", type=float, help="merges in the day before the burst "
                        "(default 22.5 per hour)")
    parser.add_argument("--burst-hour", type=float, help="hour at twice the rate (default 4)")
    parser.add_argument("--speed", type=float, help="pipeline seconds per real second "
                        "(default 30; 120 with --quick)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hosts", type=int, default=300)
    parser.add_argument("--gate-fail", type=float, default=0.03)
    parser.add_argument("--breach", type=float, default=0.005,
                        help="share of releases that break the heartbeat (default 0.5%%: about "
                        "one a day; 3%% is a stress test)")
    parser.add_argument("--unlock-after", type=float, default=15.0, help="minutes")
    parser.add_argument("--in-flight", type=int, default=12,
                        help="the train's releases in flight at once (1: one at a time)")
    parser.add_argument("--no-serial", action="store_true", help="the release train only")
    parser.add_argument("--quick", action="store_true", help="a 1-hour day at ×120")
    args = parser.parse_args()
    hours = args.hours or (1.0 if args.quick else 8.0)
    options = Options(
        hours=hours, merges=args.merges or 22.5 * hours,
        burst_hour=args.burst_hour if args.burst_hour is not None else (None if args.quick
                                                                          else 4.0),
        speed=args.speed or (120.0 if args.quick else 30.0), seed=args.seed, hosts=args.hosts,
        gate_fail=args.gate_fail, breach=args.breach, unlock_after_min=args.unlock_after,
        serial=not args.no_serial, in_flight=args.in_flight)
    with tempfile.TemporaryDirectory() as workdir:
        day = asyncio.run(run_day(options, Path(workdir)))
        report(day)


if __name__ == "__main__":
    main()
