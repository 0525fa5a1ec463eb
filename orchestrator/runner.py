"""Running pipelines: take what was merged, ship it as a release train, hand over to the
watch, and start the next release as soon as the pipeline is free."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator import flows
from orchestrator.release import State
from orchestrator.runtime import Ship
from orchestrator.store import Lock, Release
from shiptypes import Commit


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

    def kick(self, pipeline: str, actor: str = "ship") -> asyncio.Task:
        """Make sure what is queued on `pipeline` ships: start its train loop if it is idle,
        or tell the running loop to look again. Call from the event loop's thread."""
        self._dirty.add(pipeline)
        train = self._trains.get(pipeline)
        if train is None or train.done():
            train = asyncio.create_task(self._train(pipeline, actor))
            self._trains[pipeline] = train
        return train

    async def _train(self, pipeline: str, actor: str) -> None:
        """Ship release after release while merges keep arriving. The loop ends only when
        a pass found nothing to do and nothing was kicked meanwhile."""
        while pipeline in self._dirty:
            self._dirty.discard(pipeline)
            while (await self.ship_next(pipeline, actor, watch=False)).started:
                pass

    async def deploy(self, pipeline: str, commits: Iterable[Commit], actor: str,
                     watch: bool = True) -> DeployOutcome:
        """Record the merges, then ship the next release train if the pipeline is free."""
        rt = self.ship.pipeline(pipeline)
        for commit in commits:
            rt.store.record_merge(pipeline, commit)
        return await self.ship_next(pipeline, actor, watch)

    async def ship_next(self, pipeline: str, actor: str, watch: bool = True) -> DeployOutcome:
        rt = self.ship.pipeline(pipeline)
        claim = rt.store.start_release(pipeline, rt.config.train.max_commits, actor)
        if not claim.won:
            if claim.lock is not None:
                rt.notify("refused", f"deploy by {actor} refused: {claim.reason}", actor=actor)
            return DeployOutcome(False, claim.reason, claim.release, lock=claim.lock)
        release = claim.release
        state = await flows.release_flow(pipeline, release.id)
        if state == State.LIVE:
            watching = asyncio.create_task(flows.watch_flow(pipeline, release.id))
            rt.watches.add(watching)
            watching.add_done_callback(rt.watches.discard)
            if watch:
                state = await watching
        return DeployOutcome(True, state, rt.store.release(release.id), state)

    async def settle(self, pipeline: str) -> None:
        """Wait for every watch and convergence follower of the pipeline to end."""
        rt = self.ship.pipeline(pipeline)
        while rt.watches:
            await asyncio.gather(*list(rt.watches), return_exceptions=True)

    async def rollback(self, pipeline: str, actor: str, reason: str,
                       to_number: int | None = None,
                       minutes_ago: float | None = None) -> flows.RollbackOutcome:
        return await flows.rollback_flow(pipeline, actor=actor, reason=reason, auto=False,
                                         to_number=to_number, minutes_ago=minutes_ago)
