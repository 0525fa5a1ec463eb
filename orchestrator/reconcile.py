"""Reconcile on start: a ship process that drives releases first finds the releases a lost
process left half-way (its driver is gone) and settles each one, then pages on-call for
any release that overstays a stage's deadline, so that a crash never leaves the fleet, the
store and the people disagreeing about what is live, and a pipeline never stops silently.

Who drives what: every claim on a release (queueing it, a flow run starting on it, a take
over) is an event naming the process (host, pid, start time). A driver is gone when its
Prefect flow run has ended (read when a Prefect API is configured), or when its process is
no longer running on this host. A driver on another host is left alone unless told
(`ship reconcile --take-over`): the stage deadline pages if it is really gone. Taking over
is a compare-and-set on the newest claim, so two processes reconciling at once never both
drive one release.

What each stage becomes:

- queued, building, pre-prod, gating, ready: failed, "orchestrator restarted mid-<stage>", and its
  commits queued again in the same transaction. Nothing of it reached the fleet; a build or
  a gate half-run by a lost process proves nothing, and the next release (a new number)
  builds, gates and ships the same commits from the start. Nothing merged is lost and no
  release is shipped twice.
- promoting: the hosts' real state is read through the driver's observe(). Hosts on this
  release (the publish went out) are followed until every one has started, then the
  release goes live and is watched, or reverted and halted as a rollout would be. Hosts
  still on the previous release (the publish never went out): halted, nothing to undo.
  Anything else (hosts mixed, or a driver that cannot say): the previous release is
  published again (hosts keep it) and the release halted. Halted by a restart, its commits
  are queued again. A lock taken meanwhile wins: reverted and halted.
- live, watching: watched again for what is left of its watch, and at least one window.
- a running rollback: completed by publishing its target again, and the lock taken if the
  lost process had not taken it yet.

The store's word that a release is live is only as good as the hosts serving it: for a
pipeline with a live release, the hosts a fleet driver can check (`check_hosts`, the local
fleet's) that are down, or were when this process started (an agent gone, started again),
are named in a `hosts_down` event, which `ship status` shows.

Every decision is a `reconcile` event (and a notice); a take over is a `take_over` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from prefect import flow

from orchestrator import flows, moves, runtime
from orchestrator import schema as t
from orchestrator.handle import pid_alive
from orchestrator.release import (
    HOLDS_PIPELINE,
    SHIPPED,
    TRANSITIONS,
    IllegalTransition,
    State,
)
from orchestrator.runtime import PipelineRuntime, Ship
from orchestrator.store import (
    ConcurrentUpdate,
    Driver,
    Release,
    Rollback,
    Store,
    describe_process,
    process_stat,
)
from shiptypes import FleetStatus

if TYPE_CHECKING:
    from orchestrator.runner import Runner

ACTOR = "reconcile"
WATCHED = (State.LIVE, State.WATCHING)
# Events worth a person's attention, shown by `ship status`.
FAULT_KINDS = ("notify_failed", "overdue", "reconcile", "take_over", "hold", "revert",
               "rollback_failed", "breach", "stall", "hosts_down")


@dataclass(frozen=True)
class Reconciled:
    """One decision: what was found, and what became of it."""

    pipeline: str
    release: str | None
    was: str
    # failed | halted | live | watching | rolled_back | rollback_failed | left | paged |
    # hosts_down | error
    action: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "release": self.release, "was": self.was,
                "action": self.action, "detail": self.detail}


async def reconcile(ship: Ship, runner: Runner | None = None, *, take_over: bool = False,
                    watch: bool = True) -> list[Reconciled]:
    """Settle every release a lost process left, then page overdue stages. Call it when a
    process that drives releases starts, before it ships anything.

    With a `runner` (a process that keeps running, such as `ship serve`), the pipelines
    reconcile freed with commits waiting are kicked, and stage deadlines keep being checked
    in the background for as long as the event loop runs. `take_over` also claims releases
    driven from other hosts; without `watch`, watches are left to the next process."""
    outcomes: list[Reconciled] = []
    for name in ship.config.pipelines:
        try:
            outcomes += await _reconcile_pipeline(ship, name, take_over, watch)
        except Exception as error:  # one pipeline's trouble must not leave the others be
            why = f"{type(error).__name__}: {error}"
            ship.store.event(name, "reconcile", f"reconcile failed: {why}", ACTOR)
            outcomes.append(Reconciled(name, None, "?", "error", why))
    outcomes += page_overdue(ship)
    if runner is not None:
        for name in {o.pipeline for o in outcomes if o.action in ("failed", "halted")}:
            if ship.store.pipeline_state(name).pending_merges:
                runner.kick(name, actor=ACTOR)
        _start_watchdog(ship)
    return outcomes


async def _reconcile_pipeline(ship: Ship, name: str, take_over: bool,
                              watch: bool) -> list[Reconciled]:
    store = ship.store
    found = await _hosts_down(ship, name)
    rollback = store.pipeline_state(name).rollback
    if rollback is not None:
        found.append(await _settle_rollback(ship, name, rollback, take_over))
    flights = store.pipeline_state(name).flights
    for in_flight in reversed(flights):  # oldest first, as they would have promoted
        found.append(await _settle_in_flight(ship, name, in_flight, take_over, watch))
    if watch:
        rolling_back = store.pipeline_state(name).rollback
        settled = {in_flight.id for in_flight in flights}
        for release in store.releases(name, limit=50):
            if release.state in WATCHED and release.id not in settled and not (
                    rolling_back and rolling_back.from_id == release.id):
                found.append(await _settle_watch(ship, name, release, take_over))
    return found


async def _hosts_down(ship: Ship, name: str) -> list[Reconciled]:
    """The hosts of a live release that are down or were (agents found gone), named."""
    live = ship.store.pipeline_state(name).live
    check = getattr(ship.pipeline(name).fleet, "check_hosts", None) if live else None
    if live is None or not callable(check):
        return []
    down = await asyncio.to_thread(check)
    if not down:
        return []
    detail = (f"the store says {live.name} is live, but {len(down)} host(s) are or were down: "
              + "; ".join(f"{f.host}: {f.reason}" for f in down))
    ship.store.event(name, "hosts_down", detail, ACTOR, live.id,
                     {"hosts": {f.host: f.reason for f in down}})
    return [Reconciled(name, live.name, live.state.value, "hosts_down", detail)]


# --- who drives what ------------------------------------------------------------------------


async def _claim(store: Store, release: Release, take_over: bool,
                 rollback_id: int | None = None) -> tuple[bool, str]:
    """Take the release (or its rollback) over if its driver is gone: (won, why)."""
    driver = store.driver(release.id, rollback_id)
    # A release flow run ends once its release is live, and its process starts the watch
    # next: for a live release, an ended run proves nothing; the process check decides.
    handover = release.state == State.LIVE and rollback_id is None
    gone, why = await _gone(driver, take_over, handover)
    if not gone:
        return False, why
    if not store.take_over(release.id, driver, why, rollback_id):
        return False, "another process took it over first"
    if driver is not None and driver.flow_run_id:
        await _mark_crashed(driver.flow_run_id, why)
    return True, why


async def _gone(driver: Driver | None, take_over: bool, handover: bool) -> tuple[bool, str]:
    if driver is None:
        return True, "no process is recorded as driving it"
    who = describe_process(driver.owner)
    state = None if handover else await _flow_run_state(driver.flow_run_id)
    if state is not None and state.is_final():
        return True, f"its flow run ended {state.type.value.lower()} ({who})"
    alive = process_alive(driver.owner)
    if alive is False:
        return True, f"{who}, which drove it, is gone"
    if alive is None and take_over:
        return True, f"taken over by hand from {who}"
    if alive:
        return False, f"{who} still drives it"
    return False, (f"{who} drives it and cannot be seen from here (`ship reconcile "
                   "--take-over` claims it)")


def process_alive(owner: dict[str, Any]) -> bool | None:
    """Whether the process that made a claim still runs: None when it ran on another host."""
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname() or not isinstance(pid, int):
        return None
    stat = process_stat(pid)
    if stat is None and not os.path.isdir("/proc"):
        return pid_alive(pid)
    if stat is None or stat[0] == "Z":
        return False
    return owner.get("started") in (None, stat[1])  # the same pid, not a reused one


def _prefect_api() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


async def _flow_run_state(flow_run_id: str | None) -> Any:
    """The flow run's Prefect state, when a Prefect API is configured (the temporary one a
    process starts for itself knows nothing of other processes)."""
    if not flow_run_id or not _prefect_api():
        return None
    from uuid import UUID

    from prefect.client.orchestration import get_client

    try:
        async with get_client() as client:
            return (await client.read_flow_run(UUID(flow_run_id))).state
    except Exception:  # unknown run, or an API that does not answer: no evidence either way
        return None


async def _mark_crashed(flow_run_id: str, why: str) -> None:
    """Tell Prefect a lost process's run crashed, so its UI agrees with ship."""
    state = await _flow_run_state(flow_run_id)
    if state is None or state.is_final():
        return
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with contextlib.suppress(Exception):
        async with get_client() as client:
            await client.set_flow_run_state(flow_run_id, Crashed(message=why), force=True)


# --- settling what a lost process left ---------------------------------------------------


async def _settle_in_flight(ship: Ship, name: str, release: Release, take_over: bool,
                            watch: bool) -> Reconciled:
    claimed, why = await _claim(ship.store, release, take_over)
    if not claimed:
        return _left(name, release, why)
    was = release.state.value
    if release.state == State.PROMOTING:
        state = State(await resume_promotion_flow(name, release.id))
        if state == State.LIVE and watch:
            _spawn_watch(ship.pipeline(name), release.id, resumed=False)
        after = ship.store.release(release.id)
        what = ("resumed the promotion: live" if state == State.LIVE
                else f"{after.state}: {after.reason}")
        return _decided(ship.store, name, after, was, after.state.value, f"{why}; {what}")
    reason = f"orchestrator restarted mid-{release.state}"
    try:
        stopped, requeued = ship.store.stop_orphan(release.id, State.FAILED, reason)
    except (IllegalTransition, ConcurrentUpdate):
        return _left(name, release, "it moved on meanwhile")
    ship.pipeline(name).notify("halted", f"{stopped.name} failed: {reason} ({why}); its "
                               f"{requeued} commit(s) ride the next release", stopped,
                               level="warning", actor=ACTOR)
    return _decided(ship.store, name, stopped, was, "failed",
                    f"{why}; failed, {requeued} commit(s) queued again")


async def _settle_watch(ship: Ship, name: str, release: Release,
                        take_over: bool) -> Reconciled:
    claimed, why = await _claim(ship.store, release, take_over)
    if not claimed:
        return _left(name, release, why)
    _spawn_watch(ship.pipeline(name), release.id, resumed=True)
    return _decided(ship.store, name, release, release.state.value, "watching",
                    f"{why}; watching what is left of its watch")


async def _settle_rollback(ship: Ship, name: str, rollback: Rollback,
                           take_over: bool) -> Reconciled:
    release = ship.store.release(rollback.from_id)
    claimed, why = await _claim(ship.store, release, take_over, rollback.id)
    if not claimed:
        return _left(name, release, f"its rollback: {why}")
    outcome = await resume_rollback_flow(name, rollback.id)
    return _decided(ship.store, name, ship.store.release(rollback.from_id), "rolling back",
                    "rolled_back" if outcome.won else "rollback_failed",
                    f"{why}; rollback completed: {outcome.reason}")


def _spawn_watch(rt: PipelineRuntime, release_id: int, resumed: bool) -> None:
    watching = asyncio.create_task(flows.watch_flow(rt.name, release_id, resumed=resumed))
    rt.watches.add(watching)
    watching.add_done_callback(rt.watches.discard)


def _left(name: str, release: Release, why: str) -> Reconciled:
    return Reconciled(name, release.name, release.state.value, "left", why)


def _decided(store: Store, name: str, release: Release, was: str, action: str,
             detail: str) -> Reconciled:
    store.event(name, "reconcile", f"{release.name} was {was}: {detail}", ACTOR, release.id,
                {"was": was, "action": action})
    return Reconciled(name, release.name, was, action, detail)


@flow(name="resume-promotion", flow_run_name="{pipeline}-resume-promotion-{release_id}",
      **flows.FLOW)
async def resume_promotion_flow(pipeline: str, release_id: int) -> str:
    """Carry on with a promotion a lost process left, from what the hosts really run."""
    rt = runtime.current().pipeline(pipeline)
    moves.remember_run(rt, release_id, "resume-promotion")
    release = rt.store.release(release_id)
    state = rt.store.pipeline_state(pipeline)
    previous = state.live
    status = await asyncio.to_thread(rt.fleet.observe)
    if state.lock is not None:
        return await _stop_promotion(rt, release, previous, "orchestrator restarted "
                                     f"mid-promotion and the pipeline is {state.lock.describe()}")
    if status.release is None or status.release < release.number:  # newer: it overtook
        told = "the fleet reports no release" if status.release is None else (
            f"the fleet reports #{status.release}")
        if previous is not None and status.release == previous.number:
            return _stopped(rt, release, "orchestrator restarted before the fleet was told "
                            f"({told}): nothing to undo")
        return await _stop_promotion(rt, release, previous,
                                     f"orchestrator restarted mid-promotion ({told})")
    published_at = release.entered(State.PROMOTING) or rt.clock.now()
    started = await moves.until_every_host_started(rt, release, previous, published_at)
    if started.trouble:
        return (await flows.halt_promotion(rt, release_id, started.trouble)).value
    detail = f"promotion resumed after a restart: {_hosts(started.status)}"
    return flows.went_live(rt, release_id, detail, actor=ACTOR).value


async def _stop_promotion(rt: PipelineRuntime, release: Release, previous: Release | None,
                          reason: str) -> str:
    """Send the hosts back to what was live (they keep it), then halt."""
    await moves.revert(rt, release, previous)
    return _stopped(rt, release, reason)


def _stopped(rt: PipelineRuntime, release: Release, reason: str) -> str:
    halted, requeued = rt.store.stop_orphan(release.id, State.HALTED, reason,
                                            halted_by="restart")
    rt.notify("halted", f"{halted.name} halted: {reason}; its {requeued} commit(s) ride the "
              "next release", halted, level="warning", actor=ACTOR)
    return State.HALTED.value


@flow(name="resume-rollback", flow_run_name="{pipeline}-resume-rollback-{rollback_id}",
      **flows.FLOW)
async def resume_rollback_flow(pipeline: str, rollback_id: int) -> flows.RollbackOutcome:
    """Complete a rollback a lost process left: publish its target again and lock."""
    rt = runtime.current().pipeline(pipeline)
    rollback = next(r for r in rt.store.rollbacks(pipeline) if r.id == rollback_id)
    moves.remember_run(rt, rollback.from_id, "resume-rollback", rollback_id)
    if rt.store.pipeline_state(pipeline).lock is None:
        rt.store.take_lock(pipeline, rollback.actor,
                           moves.lock_reason(rollback.reason, rollback.auto), auto=rollback.auto)
    live, target = rt.store.release(rollback.from_id), rt.store.release(rollback.to_id)
    rt.notify("rollback", f"completing the rollback {live.name} → {target.name} "
              f"({rollback.actor}) a lost process left", live, level="warning", actor=ACTOR)
    return await moves.move_fleet_back(rt, rollback.id, live, target, rollback.actor)


def _hosts(status: FleetStatus) -> str:
    return f"{status.started}/{status.hosts} hosts started, {status.failed} failed"


# --- stage deadlines ---------------------------------------------------------------------


@dataclass(frozen=True)
class Overdue:
    pipeline: str
    release: Release
    stage: str
    since: datetime  # when the deadline started counting
    limit: float  # pipeline seconds
    elapsed: float


def overdue(ship: Ship) -> list[Overdue]:
    """Releases (and rollbacks) that overstayed their stage's deadline."""
    found = []
    now = ship.clock.now()
    for name, config in ship.config.pipelines.items():
        for release, stage, since in _stays(ship.store, name, config.heartbeat.watch):
            limit = getattr(config.deadlines, stage)
            elapsed = (now - since).total_seconds()
            if elapsed > limit:
                found.append(Overdue(name, release, stage, since, limit, elapsed))
    return found


def _stays(store: Store, name: str, watch: float) -> Iterable[tuple[Release, str, datetime]]:
    state = store.pipeline_state(name)
    for flight in state.flights:
        since = flight.entered(flight.state)
        if flight.state == State.READY and since:
            if state.lock is not None:
                continue  # waiting out a lock is a person's call, not a stall
            since = max([since] + [lock.released_at for lock in store.locks(name, limit=1)
                                   if lock.released_at])
        if since:
            yield flight, flight.state.value, since
    for release in store.releases(name, limit=50):
        live_at = release.entered(State.LIVE)
        if release.state == State.LIVE and live_at:
            yield release, "live", live_at
        elif release.state == State.WATCHING and live_at:
            yield release, "watching", live_at + timedelta(seconds=watch)
    if state.rollback is not None:
        yield store.release(state.rollback.from_id), "rollback", state.rollback.started_at


def page_overdue(ship: Ship) -> list[Reconciled]:
    """Page on-call once for each release overstaying a stage (whichever process notices)."""
    paged = []
    for late in overdue(ship):
        text = (f"{late.release.name} has made no progress in {late.stage} for "
                f"{_minutes(late.elapsed)} (deadline {_minutes(late.limit)}); is the ship "
                "process driving it alive? `ship reconcile` settles what a lost one left")
        if ship.store.mark_overdue(late.release.id, late.stage, late.since, text,
                                   {"limit_s": late.limit}):
            ship.pipeline(late.pipeline).notify(
                "stall", f"pipeline {late.pipeline} stalled: {text}", late.release,
                level="page", details={"stage": late.stage})
            paged.append(Reconciled(late.pipeline, late.release.name, late.stage, "paged",
                                    text))
    return paged


async def watch_deadlines(ship: Ship) -> None:
    """Check stage deadlines for as long as the event loop runs (a few times per shortest
    deadline, at most every pipeline minute)."""
    shortest = min(min(p.deadlines.model_dump().values()) for p in ship.config.pipelines.values())
    while True:
        await ship.clock.wait(min(60.0, shortest / 4))
        try:
            page_overdue(ship)
        except Exception as error:  # a store hiccup must not end the watchdog
            print(f"ship: stage deadline check failed: {type(error).__name__}: {error}",
                  file=sys.stderr, flush=True)


_watchdogs: dict[int, asyncio.Task] = {}


def _start_watchdog(ship: Ship) -> None:
    running = _watchdogs.get(id(ship))
    if running is None or running.done():
        _watchdogs[id(ship)] = asyncio.create_task(watch_deadlines(ship))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


# --- consistency -------------------------------------------------------------------------


def audit(store: Store, pipeline: str, fleet: FleetStatus | None = None) -> list[str]:
    """Everything that disagrees in the store about a pipeline (and, given an observation
    of an idle fleet, between the store and the hosts). [] when consistent."""
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(t.pipelines).where(t.pipelines.c.name == pipeline)).first()
        if row is None:
            return []
        releases = {r.id: r for r in conn.execute(sa.select(t.releases).where(
            t.releases.c.pipeline == pipeline))}
        merges = conn.execute(sa.select(t.merges).where(t.merges.c.pipeline == pipeline)).all()
        events = conn.execute(sa.select(t.events).where(t.events.c.pipeline == pipeline)
                              .order_by(t.events.c.id)).all()
        locks = conn.execute(sa.select(t.locks.c.id).where(
            t.locks.c.pipeline == pipeline, t.locks.c.released_at.is_(None))).scalars().all()
        running = conn.execute(sa.select(t.rollbacks.c.id).where(
            t.rollbacks.c.pipeline == pipeline, t.rollbacks.c.outcome == "running")).scalars().all()
        history = conn.execute(sa.select(t.live_history).where(
            t.live_history.c.pipeline == pipeline).order_by(t.live_history.c.since,
                                                            t.live_history.c.id)).all()
    problems = _numbers(row, releases) + _claims(row, releases, locks, running)
    problems += _live(row, releases, history) + _merges(releases, merges)
    problems += _state_events(releases, events)
    if fleet is not None and row.in_flight_id is None and row.rollback_id is None:
        problems += _fleet(fleet, releases.get(row.live_id))
    return problems


def _numbers(row: Any, releases: dict[int, Any]) -> list[str]:
    numbers = sorted(r.number for r in releases.values())
    if numbers != list(range(1, len(numbers) + 1)) or row.next_number != len(numbers) + 1:
        return [f"release numbers are not 1..{len(numbers)} (next {row.next_number}): {numbers}"]
    return []


def _claims(row: Any, releases: dict[int, Any], locks: list[int],
            running: list[int]) -> list[str]:
    problems = []
    holding = [r.id for r in releases.values() if State(r.state) in HOLDS_PIPELINE]
    # The pipeline names its newest claim while that one holds it; older ones may fly on.
    if row.in_flight_id is not None and row.in_flight_id not in holding:
        problems.append(f"in flight: the pipeline says {row.in_flight_id}, releases {holding}")
    if locks != ([row.lock_id] if row.lock_id else []):
        problems.append(f"lock: the pipeline says {row.lock_id}, open locks {locks}")
    if running != ([row.rollback_id] if row.rollback_id else []):
        problems.append(f"rollback: the pipeline says {row.rollback_id}, running {running}")
    return problems


def _live(row: Any, releases: dict[int, Any], history: list[Any]) -> list[str]:
    problems = []
    live = releases.get(row.live_id)
    if row.live_id is not None and (live is None or State(live.state) not in SHIPPED):
        problems.append(f"live release {row.live_id} is {live.state if live else 'missing'}")
    if history and history[-1].release_id != row.live_id:
        problems.append(f"live history ends on {history[-1].release_id}, live is {row.live_id}")
    promoted = [h.release_id for h in history if h.via == "promote"]
    if len(promoted) != len(set(promoted)):
        problems.append(f"a release was promoted twice: {promoted}")
    return problems


def _merges(releases: dict[int, Any], merges: list[Any]) -> list[str]:
    problems = []
    shipped: dict[str, int] = {}
    for release in releases.values():
        for commit in release.commits:
            if "live" in (release.stage_times or {}):
                if commit["sha"] in shipped:
                    problems.append(f"{commit['sha'][:7]} went live in two releases")
                shipped[commit["sha"]] = release.id
        stopped = release.halted_by == "restart" or (release.reason or "").startswith(
            "orchestrator restarted")
        if stopped and any(m.release_id == release.id for m in merges):
            problems.append(f"release {release.number} was stopped by a restart but kept "
                            "its commits: they would be lost")
    for merge in merges:
        owner = releases.get(merge.release_id)
        if merge.release_id is not None and (owner is None or merge.sha not in
                                             {c["sha"] for c in owner.commits}):
            problems.append(f"merge {merge.sha[:7]} points at a release without it")
        if merge.release_id is None and merge.sha in shipped:
            problems.append(f"merge {merge.sha[:7]} is queued and went live already")
    return problems


def _state_events(releases: dict[int, Any], events: list[Any]) -> list[str]:
    """Each release's state events chain from queued to its state by allowed moves."""
    problems = []
    states = {s.value for s in State}
    for release in releases.values():
        moves = [e for e in events if e.release_id == release.id and e.kind in states]
        path = [m.kind for m in moves]
        if not path or path[0] != State.QUEUED.value:
            problems.append(f"release {release.number}: no queued event")
            continue
        for before, after in pairwise(path):
            if State(after) not in TRANSITIONS[State(before)]:
                problems.append(f"release {release.number}: {before} → {after} in the events")
        if path[-1] != release.state:
            problems.append(f"release {release.number} is {release.state}, its events end on "
                            f"{path[-1]}")
    return problems


def _fleet(status: FleetStatus, live: Any) -> list[str]:
    number = live.number if live is not None else None
    if status.release != number or status.converged != status.hosts:
        return [f"the store says #{number} is live; the fleet: #{status.release}, "
                f"{status.converged}/{status.hosts} converged, {status.failed} failed"]
    return []


def attention(store: Store, pipeline: str, limit: int = 5) -> list[dict[str, Any]]:
    """The newest events that need a person's eye (faults, restarts, pages), for
    `ship status`."""
    recent = [e for e in store.events(pipeline, limit=300) if e.kind in FAULT_KINDS]
    return [{"at": e.at.isoformat(), "kind": e.kind, "message": e.message}
            for e in recent[-limit:]]
