"""Moving the fleet: telling every host of a release at once and following them until
each has started it, for a promotion, a revert and a rollback; and the rollback itself.

Nothing here imports Prefect: the flows (orchestrator.flows) run these steps, and so does a
CLI that rolls back with no Prefect API at hand, which must tell the fleet within a second
or two rather than wait ~10 s for a temporary API to start.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import datetime, timedelta
from typing import NamedTuple

from orchestrator import runtime
from orchestrator.release import SHIPPED, RollbackOutcome
from orchestrator.rollback import NoRollbackTarget, choose_target
from orchestrator.runtime import PipelineRuntime
from orchestrator.store import Release, Rollback
from shiptypes import FleetDriver, FleetStatus

TAKEN_OVER = "the fleet was taken over by"
OVERTAKEN = "overtaken by"
log = logging.getLogger("ship.moves")


def remember_run(rt: PipelineRuntime, release_id: int, flow: str = "release",
                 rollback_id: int | None = None) -> None:
    """Record that this process drives the release (in a Prefect flow run, named): a process
    started after a crash tells orphans from releases still driven (orchestrator.reconcile)."""
    # A rollback run outside Prefect's engine (the CLI) must not import Prefect just to
    # learn that it is in no flow run.
    context = sys.modules.get("prefect.context")
    run = context.FlowRunContext.get() if context else None
    run_id = str(run.flow_run.id) if run and run.flow_run else None
    rt.store.record_run(release_id, flow, run_id, rollback_id)


class Started(NamedTuple):
    trouble: str | None  # why not every host started the release; None when they did
    rollout_id: int
    status: FleetStatus


async def until_every_host_started(rt: PipelineRuntime, release: Release,
                                   previous: Release | None,
                                   published_at: datetime) -> Started:
    """After the fleet was told of `release`: wait until every host has started it and
    record the rollout. When too many hosts failed, they are returned to `previous`."""
    status = await until_started(rt, release, rt.fleet)
    rollout_id = rt.store.record_rollout(release.id, "promote", published_at, status)
    if overtook(status, release):
        # A newer release of this pipeline was published meanwhile; this one is on every
        # host once each has started it or the newer one.
        if status.floor is not None and status.floor >= release.number:
            return Started(None, rollout_id, status)
        return Started(f"{OVERTAKEN} #{status.release} before every host had started it",
                       rollout_id, status)
    if status.release != release.number:
        # A rollback published its target meanwhile: the fleet is its, nothing to revert.
        return Started(f"{TAKEN_OVER} release #{status.release} (a rollback) before every "
                       "host had started this one", rollout_id, status)
    trouble = rollout_trouble(rt, status)
    if trouble:
        await revert(rt, release, previous)
    return Started(trouble, rollout_id, status)


async def until_started(rt: PipelineRuntime, release: Release, fleet: FleetDriver) -> FleetStatus:
    deadline = rt.clock.now() + timedelta(seconds=rt.config.rollout.stagger
                                          + rt.config.preprod.timeout)
    while True:
        status = await asyncio.to_thread(fleet.observe)
        rt.report_progress(release, "starting", status)
        if overtook(status, release):
            if status.floor is None or status.floor >= release.number:
                return status
        elif (status.all_started or _too_many_failed(rt, status)
              or status.release != release.number):
            return status
        if rt.clock.now() >= deadline:
            return status
        await rt.clock.wait(rt.poll_s)


def overtook(status: FleetStatus, release: Release) -> bool:
    """A newer release of the pipeline was published after this one."""
    return status.release is not None and status.release > release.number


def _too_many_failed(rt: PipelineRuntime, status: FleetStatus) -> bool:
    return status.failed / max(1, status.hosts) > rt.config.rollout.max_failed_share


def rollout_trouble(rt: PipelineRuntime, status: FleetStatus) -> str | None:
    share = status.failed / max(1, status.hosts)
    if _too_many_failed(rt, status):
        hosts = ", ".join(f"{f.host} ({f.reason})" for f in status.failures[:3])
        return (f"{status.failed}/{status.hosts} hosts failed ({share:.0%} > "
                f"{rt.config.rollout.max_failed_share:.0%}): {hosts}")
    if not status.all_started:
        return f"only {status.started}/{status.hosts} hosts started before the deadline"
    return None


async def revert(rt: PipelineRuntime, release: Release, previous: Release | None) -> None:
    """Send the hosts back to what was live: they keep it on disk, so this is quick."""
    if previous is None:
        rt.store.event(rt.name, "revert", f"{release.name} halted: no earlier release to "
                       "return the hosts to", release_id=release.id)
        return
    published_at = rt.clock.now()
    await asyncio.to_thread(rt.fleet.publish, previous.ref())
    status = await until_started(rt, previous, rt.fleet)
    rt.store.record_rollout(release.id, "revert", published_at, status)
    rt.store.event(rt.name, "revert", f"hosts returned to {previous.name} after {release.name} "
                   "failed to roll out", release_id=release.id)


async def follow_convergence(rt: PipelineRuntime, release: Release, rollout_id: int) -> None:
    while True:
        status = await asyncio.to_thread(rt.fleet.observe)
        if status.release != release.number:
            return  # a newer release or a rollback took over the fleet
        rt.report_progress(release, "converging", status)
        rt.store.update_rollout(rollout_id, status)
        if status.done:
            return
        await rt.clock.wait(rt.poll_s)


def spawn(rt: PipelineRuntime, coroutine: object) -> asyncio.Task:
    work = asyncio.create_task(coroutine)  # type: ignore[arg-type]
    rt.watches.add(work)
    work.add_done_callback(rt.watches.discard)
    return work


# --- rollback -----------------------------------------------------------------------------


async def roll_back(pipeline: str, actor: str, reason: str, auto: bool = False,
                    to_number: int | None = None, minutes_ago: float | None = None,
                    breach_at: datetime | None = None) -> RollbackOutcome:
    """Roll back to a chosen release (or the one live `minutes_ago`, default the
    pipeline's lookback) with no gates, and lock the pipeline. Of two racing rollbacks,
    exactly one runs; the other is told which won. The `rollback` flow runs this; the CLI
    runs it outside Prefect's engine when no Prefect API is at hand."""
    rt = runtime.current().pipeline(pipeline)
    live = rt.store.pipeline_state(pipeline).live
    if live is None:
        return RollbackOutcome(False, f"nothing is live on {pipeline}: nothing to roll back")
    answered = rolled_back_since(rt, breach_at) if breach_at else None
    if answered is not None:
        # The breach was seen on data from before a rollback that has since completed (a
        # slower watch of an older release): rolling back again would undo good releases.
        why = (f"the breach at {breach_at:%H:%M:%S} was answered by rollback "
               f"{answered.id}, done at {answered.finished_at:%H:%M:%S}")
        rt.store.event(pipeline, "rollback_refused", f"rollback refused: {why}", actor)
        return RollbackOutcome(False, why, rollback_id=answered.id)
    try:
        target = _rollback_target(rt, live, to_number, minutes_ago, breach_at)
    except NoRollbackTarget as refusal:
        rt.store.event(pipeline, "rollback_refused", f"rollback refused: {refusal}", actor)
        return _refusal(rt, live, refusal)
    claim = rt.store.begin_rollback(pipeline, live.id, target.id, actor, reason, auto, breach_at)
    if not claim.won:
        rt.notify("refused", f"rollback by {actor} not started: {claim.reason}", live, actor=actor)
        winner = claim.rollback.id if claim.rollback else None
        return RollbackOutcome(False, claim.reason, rollback_id=winner)
    remember_run(rt, live.id, "rollback", claim.rollback.id)
    rt.store.take_lock(pipeline, actor, lock_reason(reason, auto), auto=auto)
    rt.notify("rollback", f"rolling back {live.name} → {target.name} ({actor}): {reason}",
              live, level="page" if auto else "warning", actor=actor)
    return await move_fleet_back(rt, claim.rollback.id, live, target, actor)


def lock_reason(reason: str, auto: bool) -> str:
    """Why a rollback locks the pipeline: an automatic one always says so."""
    return reason if reason.startswith("auto-rollback") or not auto else f"auto: {reason}"


def _refusal(rt: PipelineRuntime, live: Release, refusal: NoRollbackTarget) -> RollbackOutcome:
    """Say no, naming the rollback that got there first when there was one (a double
    click, or a manual and an automatic rollback racing)."""
    latest = next(iter(rt.store.rollbacks(rt.name, limit=1)), None)
    if latest is not None and latest.to_id == live.id and not isinstance(refusal, BadTarget):
        kind = "automatic" if latest.auto else "manual"
        return RollbackOutcome(False, f"{refusal}: the {kind} rollback by {latest.actor} "
                               f"({latest.outcome}) got there first", rollback_id=latest.id)
    return RollbackOutcome(False, str(refusal), bad_input=isinstance(refusal, BadTarget))


async def move_fleet_back(rt: PipelineRuntime, rollback_id: int, live: Release,
                           target: Release, actor: str) -> RollbackOutcome:
    published_at = rt.clock.now()
    try:
        await asyncio.to_thread(rt.fleet.publish, target.ref())
        status = await until_started(rt, target, rt.fleet)
        rollout_id = rt.store.record_rollout(target.id, "rollback", published_at, status)
        spawn(rt, follow_convergence(rt, target, rollout_id))
        trouble = rollout_trouble(rt, status)
    except Exception as error:
        trouble = f"{type(error).__name__}: {error}"
    rt.store.finish_rollback(rollback_id, ok=trouble is None, actor=actor, note=trouble or "")
    if trouble:
        rt.notify("rollback", f"rollback to {target.name} failed: {trouble}", live,
                  level="page", actor=actor)
        log.error("rollback to %s failed: %s", target.name, trouble)
        return RollbackOutcome(False, trouble, target.number, rollback_id)
    rt.notify("rollback", f"rolled back to {target.name}; {rt.name} is locked", target,
              actor=actor)
    return RollbackOutcome(True, f"rolled back {live.name} → {target.name}", target.number,
                           rollback_id)


class BadTarget(NoRollbackTarget):
    """The release asked for does not exist: bad input rather than a refusal."""


def _rollback_target(rt: PipelineRuntime, live: Release, to_number: int | None,
                     minutes_ago: float | None, breach_at: datetime | None) -> Release:
    if to_number is not None:
        target = rt.store.release_by_number(rt.name, to_number)
        if target is None:
            raise BadTarget(f"{rt.name} has no release #{to_number}")
        if target.id == live.id:
            raise NoRollbackTarget(f"{target.name} is what is live already")
        if target.state not in SHIPPED:
            raise NoRollbackTarget(f"{target.name} is {target.state}: only a release that "
                                   "shipped and was not rolled back can be rolled back to")
        return target
    lookback = minutes_ago if minutes_ago is not None else rt.config.rollback.lookback_minutes
    at = (breach_at or rt.clock.now()) - timedelta(minutes=lookback)
    entry = choose_target(rt.store.live_history(rt.name), live.id, at)
    return rt.store.release(entry.release_id)


def rolled_back_since(rt: PipelineRuntime, since: datetime) -> Rollback | None:
    """The latest rollback, if it completed after `since`."""
    latest = next(iter(rt.store.rollbacks(rt.name, limit=1)), None)
    if latest and latest.outcome == "done" and latest.finished_at and latest.finished_at > since:
        return latest
    return None
