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
