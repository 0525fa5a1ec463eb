"""The Prefect flows that drive releases: `release`, `watch` and `rollback`.

Flows are async (an async flow run costs ~0.2 s where a sync one costs ~1.1 s) and their
tasks are coarse — one per stage or gate, never one per host — because every task run is a
row in Prefect's database. Parameters are plain values; each flow looks its pipeline up in
the process's runtime.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from heartbeat.detector import Decision, MetricRule
from heartbeat.watcher import look
from orchestrator import moves, runtime
from orchestrator.release import TRANSITIONS, RollbackOutcome, State
from orchestrator.runtime import PipelineRuntime
from orchestrator.slugs import BuildFailed
from orchestrator.store import Release
from shiptypes import GateResult, Link

TASK = {"cache_policy": NO_CACHE, "persist_result": False, "retries": 0}
FLOW = {"persist_result": False, "validate_parameters": False}


# --- release -----------------------------------------------------------------------------


@flow(name="release", flow_run_name="{pipeline}-release-{release_id}", **FLOW)
async def release_flow(pipeline: str, release_id: int, wait_out_lock: bool = False) -> str:
    """Build the slug while CI runs; deploy pre-prod; run the gates concurrently; check the
    lock; promote. Returns the release's state when the pipeline is free again: `live`
    (hand over to `watch`), `halted`, `superseded` or `failed`. A lock halts the release at
    the door, or with `wait_out_lock` it waits there for the unlock (`train.while_locked`)."""
    rt = runtime.current().pipeline(pipeline)
    moves.remember_run(rt, release_id)
    ci = asyncio.create_task(gate_task(pipeline, release_id, rt.ci.name)) if rt.ci else None
    try:
        return (await _drive(rt, release_id, ci, wait_out_lock)).value
    except Exception as error:
        _fail(rt, release_id, f"{type(error).__name__}: {error}")
        raise
    finally:
        if ci is not None and not ci.done():
            ci.cancel()


async def _drive(rt: PipelineRuntime, release_id: int, ci: asyncio.Task | None,
                 wait_out_lock: bool) -> State:
    _stage(rt, release_id, State.BUILDING)
    try:
        await build_task(rt.name, release_id)
    except BuildFailed as error:
        return _fail(rt, release_id, str(error), error.log_tail)
    if superseded := _superseded(rt, release_id):
        return superseded
    _stage(rt, release_id, State.PREPROD)
    early = [g for g in rt.gates if getattr(g, "before_preprod", False)]
    if halted := await _run_gates(rt, release_id, early):
        return halted
    trouble = await preprod_task(rt.name, release_id)
    if trouble:
        return await _halt(rt, release_id, "preprod", trouble)
    if superseded := _superseded(rt, release_id):
        return superseded
    _stage(rt, release_id, State.GATING)
    if halted := await _run_gates(rt, release_id, [g for g in rt.gates if g not in early], ci):
        return halted
    _resolve_stall(rt, release_id)
    refusal = await _begin_promotion(rt, release_id, wait_out_lock)
    if refusal:
        return refusal
    trouble = await promote_task(rt.name, release_id)
    if trouble:
        return await halt_promotion(rt, release_id, trouble)
    return went_live(rt, release_id)


async def _run_gates(rt: PipelineRuntime, release_id: int, gates: list,
                     ci: asyncio.Task | None = None) -> State | None:
    """Run gates concurrently (with CI, when given): the release halted by those that
    failed, or None when all passed."""
    results = await asyncio.gather(*(gate_task(rt.name, release_id, g.name) for g in gates),
                                   *([ci] if ci else []))
    failed = [r for r in results if not r.passed]
    if not failed:
        return None
    return await _halt(rt, release_id, "gate", "; ".join(f"{r.gate}: {r.summary}"
                                                         for r in failed))


def went_live(rt: PipelineRuntime, release_id: int, detail: str | None = None,
              actor: str = "ship") -> State:
    """Every host runs the release or a newer one: live, unless a newer one went live
    first (then it carries this one's commits)."""
    release = rt.store.go_live(release_id)
    if release.state == State.SUPERSEDED:
        return _told_superseded(rt, release, actor)
    rt.notify("live", f"{release.name} is live on every host ({detail or _short(release)})",
              release, actor=actor)
    return State.LIVE


def _superseded(rt: PipelineRuntime, release_id: int) -> State | None:
    """Stop a release that a newer one overtook on its way: the fleet would only go back.
    Its commits are in the newer release's slug (a later commit of the same branch)."""
    release = rt.store.supersede_if_overtaken(release_id)
    return None if release is None else _told_superseded(rt, release)


def _told_superseded(rt: PipelineRuntime, release: Release, actor: str = "ship") -> State:
    rt.notify("superseded", f"{release.name} superseded: {release.reason}", release, actor=actor)
    return State.SUPERSEDED


def _stage(rt: PipelineRuntime, release_id: int, state: State) -> Release:
    release = rt.store.move(release_id, state)
    rt.notify("stage", f"{release.name} {state}", release)
    return release


def _fail(rt: PipelineRuntime, release_id: int, reason: str, log_tail: str = "") -> State:
    """Fail the release with a one-line reason; a build's log tail goes with it to the
    events (the web UI shows it) and to the notifiers."""
    release = rt.store.release(release_id)
    if State.FAILED in TRANSITIONS[release.state]:
        release = rt.store.move(release_id, State.FAILED, reason=reason)
        if log_tail:
            rt.store.event(rt.name, "build_log", f"{release.name} build log, last lines",
                           release_id=release_id, data={"log_tail": log_tail})
        rt.notify("halted", f"{release.name} failed: {reason}", release, level="warning",
                  details={"log_tail": log_tail} if log_tail else {})
    return State.FAILED


async def _halt(rt: PipelineRuntime, release_id: int, by: str, reason: str) -> State:
    release = rt.store.move(release_id, State.HALTED, reason=reason, halted_by=by)
    rt.notify("halted", f"{release.name} halted by {by}: {reason}", release, level="warning",
              gates=tuple(rt.store.gate_results(release_id)))
    halts = rt.store.halts_in_a_row(rt.name)
    if halts >= rt.config.stall.halts and rt.store.mark_stall(rt.name, paged=True):
        rt.store.event(rt.name, "stall", f"stalled: {halts} releases halted in a row",
                       release_id=release_id)
        halted = rt.store.releases(rt.name, limit=halts)
        rt.notify("stall", f"pipeline {rt.name} stalled: the last {halts} releases were halted "
                  f"(latest {release.name}: {reason})", release, level="page",
                  links=tuple(Link(f"{r.name} {link.title}", link.url)
                              for r in halted for link in rt.links(r)),
                  details={"halts": str(halts)} | {r.name: r.reason or "" for r in halted})
    return State.HALTED


def _resolve_stall(rt: PipelineRuntime, release_id: int) -> None:
    if rt.store.mark_stall(rt.name, paged=False):
        release = rt.store.release(release_id)
        rt.store.event(rt.name, "stall_resolved", f"{release.name} passed its gates: unstalled",
                       release_id=release_id)
        rt.notify("stall_resolved", f"pipeline {rt.name} moving again: {release.name} passed "
                  "its gates", release)


async def _begin_promotion(rt: PipelineRuntime, release_id: int,
                           wait_out_lock: bool) -> State | None:
    """Promote unless locked: halt, or with `wait_out_lock` wait at the door until the
    unlock, standing aside for anything newer once a lock was seen. While the heartbeat has
    no data, wait for it (a watch's length at most) rather than ship blind."""
    deadline = rt.clock.now() + timedelta(seconds=rt.config.heartbeat.watch)
    waited_for: str | None = None  # the lock this release waited out, once seen
    while True:
        claim = rt.store.begin_promotion(release_id, newest_only=waited_for is not None)
        if claim.won:
            rt.notify("stage", f"{claim.release.name} promoting to {rt.name}", claim.release)
            return None
        if claim.release.state == State.SUPERSEDED:
            return _told_superseded(rt, claim.release)
        if claim.lock is not None and not wait_out_lock:
            return await _halt(rt, release_id, "lock", claim.reason)
        if claim.lock is not None:
            if waited_for != claim.reason:
                rt.notify("stage", f"{claim.release.name} ready, waiting at the door: "
                          f"{claim.reason}", claim.release)
            waited_for = claim.reason
            deadline = rt.clock.now() + timedelta(seconds=rt.config.heartbeat.watch)
        elif rt.clock.now() >= deadline:
            return await _halt(rt, release_id, "hold", claim.reason)
        await rt.clock.wait(rt.poll_s)


@task(name="build slug", **TASK)
async def build_task(pipeline: str, release_id: int) -> str:
    rt = runtime.current().pipeline(pipeline)
    release = rt.store.release(release_id)
    slug = await asyncio.to_thread(rt.builder.build, release.ref())
    rt.store.set_slug(release_id, slug)
    facts = dict(slug.build or {})
    if facts.get("cached"):
        rt.store.event(pipeline, "slug_cached", f"{release.name} reuses slug {slug.id}: "
                       f"{release.sha[:12]} was built with this command before",
                       release_id=release_id, data={"slug": slug.id, **facts})
    rt.store.event(pipeline, "slug", f"{release.name} slug {slug.id} ({slug.size:,} bytes)",
                   release_id=release_id, data={"slug": slug.id, "uri": slug.uri, **facts})
    return slug.id


@task(name="deploy pre-prod", **TASK)
async def preprod_task(pipeline: str, release_id: int) -> str | None:
    """Deploy the slug to pre-prod and wait until it serves. Returns why not, or None."""
    rt = runtime.current().pipeline(pipeline)
    release = rt.store.release(release_id)
    preprod = rt.preprod_for(release)
    await asyncio.to_thread(preprod.publish, release.ref())
    deadline = rt.clock.now() + timedelta(seconds=rt.config.preprod.timeout)
    while True:
        status = await asyncio.to_thread(preprod.observe)
        if status.failed:
            reasons = "; ".join(f"{f.host}: {f.reason}" for f in status.failures[:3])
            return f"pre-prod did not boot the release ({reasons})"
        if status.done:
            return None
        if rt.clock.now() >= deadline:
            return f"pre-prod did not converge within {rt.config.preprod.timeout:.0f}s"
        await rt.clock.wait(min(rt.poll_s, 1.0))


@task(name="gate", task_run_name="gate-{gate_name}", **TASK)
async def gate_task(pipeline: str, release_id: int, gate_name: str) -> GateResult:
    rt = runtime.current().pipeline(pipeline)
    gate = next(g for g in [*rt.gates, rt.ci] if g is not None and g.name == gate_name)
    release = rt.store.release(release_id)
    target = rt.preprod_target(release.preprod_slot)
    began = rt.clock.now()
    try:
        result = await asyncio.to_thread(gate.run, release.ref(), target)
    except Exception as error:
        took = (rt.clock.now() - began).total_seconds()
        result = GateResult(gate_name, False, f"the gate errored: {type(error).__name__}: "
                            f"{error}", duration_s=took, errored=True)
    rt.store.record_gate(release_id, result)
    return result


@task(name="promote", **TASK)
async def promote_task(pipeline: str, release_id: int) -> str | None:
    """Tell every host at once, then watch them start. Returns None once every host has
    started (the pipeline unblocks), or why the rollout was halted and reverted."""
    rt = runtime.current().pipeline(pipeline)
    release = rt.store.release(release_id)
    previous = rt.store.pipeline_state(pipeline).live
    published_at = rt.clock.now()
    await asyncio.to_thread(rt.fleet.publish, release.ref())
    started = await moves.until_every_host_started(rt, release, previous, published_at)
    if started.trouble is None:
        # Convergence is followed beside the watch; the pipeline is free from here.
        moves.spawn(rt, moves.follow_convergence(rt, release, started.rollout_id))
    return started.trouble


async def halt_promotion(rt: PipelineRuntime, release_id: int, trouble: str) -> State:
    """Halt a promotion that did not reach every host, naming what stopped it."""
    if trouble.startswith(moves.OVERTAKEN):
        release = rt.store.move(release_id, State.SUPERSEDED, reason=trouble)
        return _told_superseded(rt, release)
    by = "rollback" if trouble.startswith(moves.TAKEN_OVER) else "rollout"
    return await _halt(rt, release_id, by, trouble)


def _short(release: Release) -> str:
    authors = sorted({c.author for c in release.commits if c.author})
    return f"{len(release.commits)} commit(s) by {', '.join(authors) or 'unknown'}"


# --- watch ---------------------------------------------------------------------------------


@flow(name="watch", flow_run_name="{pipeline}-watch-{release_id}", **FLOW)
async def watch_flow(pipeline: str, release_id: int, resumed: bool = False) -> str:
    """Watch the heartbeat for the configured time after a ship. A breach rolls back and
    locks; no data holds the next promotion until data returns. A watch `resumed` after
    its process was lost (orchestrator.reconcile) watches what is left of the watch time,
    and at least one more window."""
    rt = runtime.current().pipeline(pipeline)
    hb = rt.config.heartbeat
    moves.remember_run(rt, release_id, "watch")
    release = rt.store.release(release_id)
    if release.state not in (State.LIVE, State.WATCHING):
        return release.state.value  # rolled back before this watch began
    if release.state == State.LIVE:
        release = rt.store.move(release_id, State.WATCHING)
    since = release.entered(State.LIVE) or rt.clock.now()
    end = since + timedelta(seconds=hb.watch)
    if resumed:
        end = max(end, rt.clock.now() + timedelta(seconds=hb.window))
    rules = [localised_rule(rt, rule) for rule in hb.metrics]
    # The hold follows changes between data and no data, so a person's override (`ship
    # resume`) stands until data returns and goes away again.
    blind: Decision | None = None
    first_look = True
    # At least one look, even for a watch that starts after its time is up: a release is
    # never called healthy unlooked.
    while first_look or rt.clock.now() < end:
        remaining = (end - rt.clock.now()).total_seconds()
        await rt.clock.wait(max(0.0, min(hb.window, remaining)))
        release = rt.store.release(release_id)
        if release.state != State.WATCHING:
            return release.state.value  # rolled back meanwhile
        verdict = await asyncio.to_thread(look, rt.source, rules, _judged_since(rt, since),
                                          rt.clock.now(), hb.window)
        if verdict.breach:
            return await _on_breach(rt, release, verdict.breach)
        if (verdict.no_data is None) != (blind is None) or first_look:
            _hold_while_blind(rt, release, verdict.no_data)
        blind, first_look = verdict.no_data, False
    if blind is not None:
        # Never call a release healthy without data: the hold stays until data returns
        # on a later watch or a person resumes the pipeline.
        rt.store.move(release_id, State.DONE, reason=f"watch ended blind: {blind.explanation}")
        return State.DONE.value
    release = rt.store.move(release_id, State.DONE)
    rt.notify("watch_ok", f"{release.name} watched for {hb.watch / 60:.0f} min: heartbeat "
              "healthy", release)
    return State.DONE.value


def _judged_since(rt: PipelineRuntime, since: datetime) -> datetime:
    """Where a watch's data starts to count: when the release went live, or when the
    latest rollback completed if that is later. What the heartbeat did before a rollback
    has been answered by it; judged again by an older release's watch, the same breach
    would roll back a release that was never at fault."""
    latest = moves.rolled_back_since(rt, since)
    return latest.finished_at if latest else since


def localised_rule(rt: PipelineRuntime, rule: MetricRule) -> MetricRule:
    query = rule.query.replace("{region}", rt.config.region).replace("{pipeline}", rt.name)
    return rule.model_copy(update={"query": query})


def _hold_while_blind(rt: PipelineRuntime, release: Release, no_data: Decision | None) -> None:
    reason = f"heartbeat has no data: {no_data.explanation}" if no_data else None
    if rt.store.set_hold(rt.name, reason):
        if reason:
            rt.notify("no_data", f"{release.name}: {reason}; holding the next promotion",
                      release, level="warning")
        else:
            rt.notify("no_data", f"{release.name}: heartbeat data is back; promotions resume",
                      release)


async def _on_breach(rt: PipelineRuntime, release: Release, breach: Decision) -> str:
    text = f"auto-rollback: {breach.explanation}"
    rt.store.event(rt.name, "breach", f"{release.name} heartbeat breach: {breach.explanation}",
                   actor="heartbeat", release_id=release.id,
                   data={"metric": breach.metric, "observed": breach.observed,
                         "baseline": breach.baseline, "threshold": breach.threshold})
    rt.notify("breach", f"{release.name} heartbeat breach: {breach.explanation}", release,
              level="page", actor="heartbeat")
    if rt.config.rollback.auto:
        await rollback_flow(rt.name, actor="heartbeat", reason=text, auto=True,
                            breach_at=breach.at)
    return "breach"


# --- rollback -----------------------------------------------------------------------------


@flow(name="rollback", flow_run_name="{pipeline}-rollback-by-{actor}", **FLOW)
async def rollback_flow(pipeline: str, actor: str, reason: str, auto: bool = False,
                        to_number: int | None = None, minutes_ago: float | None = None,
                        breach_at: datetime | None = None) -> RollbackOutcome:
    """Roll back to a chosen release (or the one live `minutes_ago`, default the
    pipeline's lookback) with no gates, and lock the pipeline (orchestrator.moves)."""
    return await moves.roll_back(pipeline, actor, reason, auto, to_number, minutes_ago,
                                 breach_at)


