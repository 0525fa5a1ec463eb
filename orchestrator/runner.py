"""Running pipelines: take what was merged, ship it as a release train, hand over to the
watch, and start the next release as soon as the pipeline is free.

While a release rolls out, the merges queued behind it are built (and their CI run) ahead:
a slug and a CI result depend only on the commits, so the next release, claiming exactly
those commits when the pipeline is free, goes straight to pre-prod.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from orchestrator import flows
from orchestrator.release import RollbackOutcome, State
from orchestrator.runtime import PipelineRuntime, Ship
from orchestrator.slugs import Builder
from orchestrator.store import Lock, Release
from shiptypes import Commit, FleetStatus, Gate, GateResult, PreprodTarget, ReleaseRef, Slug


@dataclass(frozen=True)
class DeployOutcome:
    started: bool
    reason: str
    release: Release | None = None
    state: str | None = None
    lock: Lock | None = None

    @property
    def shipped(self) -> bool:
        return self.state in (State.LIVE, State.WATCHING, State.DONE)


class Runner:
    def __init__(self, ship: Ship) -> None:
        self.ship = ship
        self._trains: dict[str, asyncio.Task] = {}
        self._dirty: set[str] = set()
        self._wakes: dict[str, asyncio.Event] = {}
        self._stage_threads: dict[str, int] = {}
        self._pool_size = 0  # threads in the pool this runner gave the loop, 0: asyncio's
        self._promoting: dict[str, int] = {}  # pipeline → number of the release rolling out
        self._rollbacks: set[asyncio.Task] = set()

    def kick(self, pipeline: str, actor: str = "ship") -> asyncio.Task:
        """Make sure what is queued on `pipeline` ships: start its train loop if it is idle,
        or tell the running loop to look again. Call from the event loop's thread."""
        self._dirty.add(pipeline)
        self._build_ahead(pipeline)
        self._wakes.setdefault(pipeline, asyncio.Event()).set()
        train = self._trains.get(pipeline)
        if train is None or train.done():
            train = asyncio.create_task(self._train(pipeline, actor))
            self._trains[pipeline] = train
        return train

    async def _train(self, pipeline: str, actor: str) -> None:
        """Start releases while merges wait and the pipeline has room (`train.in_flight`),
        each flying on its own; look again whenever one frees its place or a merge lands.
        The loop ends when nothing is in flight and nothing was kicked meanwhile."""
        self._enough_threads(pipeline)
        flights: set[asyncio.Task] = set()
        wake = self._wakes.setdefault(pipeline, asyncio.Event())
        hold = self.ship.pipeline(pipeline).config.train.while_locked == "hold"
        while pipeline in self._dirty or flights:
            if pipeline in self._dirty:
                self._dirty.discard(pipeline)
                while isinstance(release := self._claim(pipeline, actor, behind_lock=hold),
                                 Release):
                    flights.add(asyncio.create_task(
                        self._fly(pipeline, release, watch=False, behind_lock=hold)))
            if not flights:
                continue
            wake.clear()
            woken = asyncio.create_task(wake.wait())
            done, _ = await asyncio.wait({*flights, woken}, return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            for flight in done & flights:
                flights.discard(flight)
                self._dirty.add(pipeline)  # a place is free: what waits may start
                if not flight.cancelled():
                    flight.exception()  # recorded on the release by its flow already

    def _enough_threads(self, pipeline: str) -> None:
        """Each stage blocks a worker thread while it runs (a build, CI, every gate, fleet
        observations). asyncio's default pool has cpu + 4 threads: with several releases in
        flight, stages would queue for a thread rather than run. Give the loop's pool room
        for every release the pipelines driven here can have in flight."""
        self._stage_threads[pipeline] = _threads_for(self.ship.pipeline(pipeline))
        needed = SPARE_THREADS + sum(self._stage_threads.values())
        if needed > self._pool_size:
            asyncio.get_running_loop().set_default_executor(
                ThreadPoolExecutor(max_workers=needed, thread_name_prefix="ship-stage"))
            self._pool_size = needed

    async def deploy(self, pipeline: str, commits: Iterable[Commit], actor: str,
                     watch: bool = True) -> DeployOutcome:
        """Record the merges, then ship the next release train if the pipeline is free."""
        rt = self.ship.pipeline(pipeline)
        for commit in commits:
            rt.store.record_merge(pipeline, commit)
        return await self.ship_next(pipeline, actor, watch)

    async def ship_next(self, pipeline: str, actor: str, watch: bool = True) -> DeployOutcome:
        claim = self._claim(pipeline, actor)
        if not isinstance(claim, Release):
            return claim
        return await self._fly(pipeline, claim, watch)

    def _claim(self, pipeline: str, actor: str,
               behind_lock: bool = False) -> Release | DeployOutcome:
        """Start the next release train if the pipeline has room (and, unless `behind_lock`,
        is not locked): the release, or why not."""
        rt = self._runtime(pipeline)
        ahead = _builds_ahead(rt).ready_for(rt)
        claim = rt.store.start_release(pipeline, len(ahead.release.commits) if ahead
                                       else rt.config.train.max_commits, actor,
                                       rt.config.train.in_flight, behind_lock)
        if not claim.won:
            if claim.lock is not None:
                rt.notify("refused", f"deploy by {actor} refused: {claim.reason}", actor=actor)
            return DeployOutcome(False, claim.reason, claim.release, lock=claim.lock)
        if ahead:
            ahead.claimed = True
        return claim.release

    async def _fly(self, pipeline: str, release: Release, watch: bool,
                   behind_lock: bool = False) -> DeployOutcome:
        """Drive a claimed release until its place in the pipeline is free; then watch it.
        With `behind_lock`, a lock makes it wait at the door rather than halt."""
        rt = self.ship.pipeline(pipeline)
        try:
            state = await flows.release_flow(pipeline, release.id, behind_lock)
        finally:
            self._promoting.pop(pipeline, None)
        if state == State.LIVE:
            watching = asyncio.create_task(flows.watch_flow(pipeline, release.id))
            rt.watches.add(watching)
            watching.add_done_callback(rt.watches.discard)
            if watch:
                state = await watching
        return DeployOutcome(True, state, rt.store.release(release.id), state)

    def _runtime(self, pipeline: str) -> PipelineRuntime:
        """The pipeline's runtime, its builder and CI gate able to take work done ahead."""
        rt = self.ship.pipeline(pipeline)
        if not isinstance(rt.builder, BuildsAhead):
            rt.builder = BuildsAhead(rt.builder)
            if rt.ci is not None:
                rt.ci = ChecksAhead(rt.ci, rt.builder)
        if self._on_progress not in rt.progress:
            rt.progress.append(self._on_progress)
        return rt

    def _on_progress(self, release: Release, phase: str, status: FleetStatus) -> None:
        """The first sight of a promotion under way: what is queued can be built ahead."""
        if (phase == "starting" and release.state == State.PROMOTING
                and self._promoting.get(release.pipeline) != release.number):
            self._promoting[release.pipeline] = release.number
            self._build_ahead(release.pipeline)

    def _build_ahead(self, pipeline: str) -> None:
        """While a release rolls out, build the merges queued behind it and run their CI,
        once per release: merges arriving later ride the release after."""
        number = self._promoting.get(pipeline)
        if number is None:
            return
        rt = self._runtime(pipeline)
        builds = _builds_ahead(rt)
        if builds.ahead is not None and builds.ahead.release.number > number:
            return
        commits = rt.store.pending_merges(pipeline, rt.config.train.max_commits)
        if not commits:
            return
        ref = ReleaseRef(0, pipeline, number + 1, commits[-1].sha, None, tuple(commits))
        target = rt.preprod_target(0)
        ci = _background(rt.ci.gate.run, ref, target) if isinstance(rt.ci, ChecksAhead) \
            else None
        builds.ahead = Ahead(ref, _background(builds.builder.build, ref), ci)
        rt.store.event(pipeline, "ahead", f"building {len(commits)} commit(s) ahead for "
                       f"{ref.name} while #{number} rolls out",
                       data={"number": ref.number, "shas": [c.sha for c in commits]})

    async def settle(self, pipeline: str) -> None:
        """Wait for every watch and convergence follower of the pipeline to end."""
        rt = self.ship.pipeline(pipeline)
        while rt.watches:
            await asyncio.gather(*list(rt.watches), return_exceptions=True)

    async def rollback(self, pipeline: str, actor: str, reason: str,
                       to_number: int | None = None,
                       minutes_ago: float | None = None) -> RollbackOutcome:
        return await flows.rollback_flow(pipeline, actor=actor, reason=reason, auto=False,
                                         to_number=to_number, minutes_ago=minutes_ago)

    async def start_rollback(self, pipeline: str, actor: str, reason: str,
                             to_number: int | None = None,
                             minutes_ago: float | None = None) -> RollbackOutcome:
        """Roll back in a task of its own and wait for it: whoever asked may stop waiting
        (a closed connection), the rollback goes on, and settle_rollbacks() waits for it."""
        work = asyncio.ensure_future(self.rollback(pipeline, actor, reason, to_number,
                                                   minutes_ago))
        self._rollbacks.add(work)
        work.add_done_callback(self._rollbacks.discard)
        return await asyncio.shield(work)

    async def settle_rollbacks(self) -> None:
        """Wait for the rollbacks started with start_rollback()."""
        while self._rollbacks:
            await asyncio.gather(*list(self._rollbacks), return_exceptions=True)


SPARE_THREADS = 8  # watches, rollbacks and store calls beside the stages


def _threads_for(rt: PipelineRuntime) -> int:
    """Threads a pipeline's releases in flight may block at once: per release its build or
    pre-prod, its CI and every gate (they run concurrently), and a fleet observation."""
    per_release = 2 + len(rt.gates) + (1 if rt.ci else 0)
    return rt.config.train.in_flight * per_release


# --- work done ahead ------------------------------------------------------------------------


@dataclass
class Ahead:
    """The slug and CI run of a release not yet claimed, for exactly these commits."""

    release: ReleaseRef
    slug: Future[Slug]
    ci: Future[GateResult] | None
    claimed: bool = False  # a release was started with it in mind (matching or not)

    def serves(self, release: ReleaseRef) -> bool:
        return (release.number == self.release.number
                and [c.sha for c in release.commits] == [c.sha for c in self.release.commits])


class BuildsAhead:
    """The pipeline's builder, handing over the slug built ahead when it is this release's."""

    def __init__(self, builder: Builder) -> None:
        self.builder = builder
        self.ahead: Ahead | None = None

    def ready_for(self, rt: PipelineRuntime) -> Ahead | None:
        """Work done ahead for the release the pipeline would start next, if any."""
        ahead = self.ahead
        if ahead is None or ahead.claimed:
            return None
        latest = next(iter(rt.store.releases(rt.name, limit=1)), None)
        return ahead if ahead.release.number == (latest.number if latest else 0) + 1 else None

    def build(self, release: ReleaseRef) -> Slug:
        ahead = self.ahead
        if ahead is not None and ahead.serves(release):
            return ahead.slug.result()
        return self.builder.build(release)


class ChecksAhead:
    """The pipeline's CI gate, handing over the run started ahead when it is this release's."""

    def __init__(self, gate: Gate, builds: BuildsAhead) -> None:
        self.gate = gate
        self.name = gate.name
        self._builds = builds

    def run(self, release: ReleaseRef, target: PreprodTarget) -> GateResult:
        ahead = self._builds.ahead
        if ahead is not None and ahead.ci is not None and ahead.serves(release):
            return ahead.ci.result()
        return self.gate.run(release, target)


def _builds_ahead(rt: PipelineRuntime) -> BuildsAhead:
    assert isinstance(rt.builder, BuildsAhead)
    return rt.builder


def _background(work: Callable[..., Any], *args: object) -> Future:
    """Run `work` on a daemon thread: work done ahead never holds up the process's exit."""
    future: Future = Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(work(*args))
            except BaseException as error:
                future.set_exception(error)

    threading.Thread(target=run, name="ship-ahead", daemon=True).start()
    return future
