"""Helpers for the crash-safety tests: releases left half-way by a process that is gone,
and a restart (a new Ship on the same store, whose providers know nothing)."""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any

from orchestrator.release import State
from orchestrator.runner import Runner
from orchestrator.runtime import Ship, use
from orchestrator.store import Release, Store
from shiptypes import Commit

PATH_TO = [State.BUILDING, State.PREPROD, State.GATING]


def dead_pid() -> int:
    """The pid of a process that ran on this host and is gone."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def lost_claim(store: Store, release_id: int, flow: str = "release",
               rollback_id: int | None = None, host: str | None = None,
               flow_run_id: str | None = None) -> None:
    """Claim a release as a process that has since died (or, with `host`, one running on
    another machine) would have: the event its flow run writes, with that process named."""
    release = store.release(release_id)
    owner = {"host": host or socket.gethostname(), "pid": dead_pid(), "started": 1}
    store.event(release.pipeline, "flow_run", f"{release.name} {flow} run", "ship", release_id,
                {"flow": flow, "flow_run_id": flow_run_id, "rollback_id": rollback_id,
                 "owner": owner})


def left_at(store: Store, n: int, state: State, pipeline: str = "us",
            in_flight: int = 1) -> Release:
    """Merge commit n and take its release to `state` with store operations only, as the
    release flow of a lost process would have."""
    store.record_merge(pipeline, Commit(f"{n:040x}", "ann", f"change {n}", store.now()))
    release = store.start_release(pipeline, 50, "test", in_flight).release
    for step in PATH_TO:
        if release.state == state:
            break
        release = store.move(release.id, step)
    if state == State.PROMOTING:
        claim = store.begin_promotion(release.id)
        assert claim.won, claim.reason
        release = claim.release
    if state in (State.LIVE, State.WATCHING):
        release = store.begin_promotion(release.id).release
        release = store.go_live(release.id)
    if state == State.WATCHING:
        release = store.move(release.id, State.WATCHING)
    assert release.state == state
    return release


def restart(runner: Runner, notifiers: list[Any]) -> Runner:
    """A new process on the same store and config: providers built afresh (a simulated
    fleet remembers nothing of what was published)."""
    old = runner.ship
    return Runner(use(Ship(old.config, old.store, old.clock, notifiers=notifiers)))
