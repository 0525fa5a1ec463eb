"""Kill tests on a real local fleet: a `ship` process is SIGKILLed in each stage of a
release (building, pre-prod, gating, mid-rollout, watching, rolling back), `ship
reconcile` runs in a new process, and the end state is checked on the store and on the
hosts: every host on one release, the store agreeing with them, the lock where it should
be, no release shipped twice, and an event saying what happened. And a host agent
SIGKILLed mid-restart, under load, while ship drives the release."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.release import State
from tests.faults.crash import (
    HOST_KILL,
    KILLS,
    CrashWorld,
    Killed,
    Settings,
    kill_a_host_agent,
    kill_and_reconcile,
    sha,
)

Make = Callable[[Settings], CrashWorld]


@pytest.fixture
def crash_world(tmp_path: Path, prefect_api: str) -> Iterator[Make]:
    made: list[CrashWorld] = []

    def make(settings: Settings) -> CrashWorld:
        made.append(CrashWorld(tmp_path, prefect_api, settings))
        return made[-1]

    yield make
    for world in made:
        world.close()


def killed(crash_world: Make, stage: str) -> tuple[CrashWorld, Killed]:
    world = crash_world(KILLS[stage])
    outcome = kill_and_reconcile(world, stage)
    assert outcome.answer["exit_code"] == 0 and outcome.answer["problems"] == {"us": []}, (
        outcome.answer)
    return world, outcome


def said(world: CrashWorld, number: int, kind: str = "reconcile") -> list[str]:
    release = world.store.release_by_number("us", number)
    return [e.message for e in world.store.events("us", release.id) if e.kind == kind]


@pytest.mark.parametrize("stage", ["building", "preprod", "gating"])
def test_killed_before_promotion_the_release_fails_and_its_commit_ships_next(
        crash_world: Make, stage: str) -> None:
    world, outcome = killed(crash_world, stage)

    assert outcome.decision()["action"] == "failed"
    assert {h["desired"] for h in outcome.at_kill} == {1}  # the fleet never heard of #2
    second = world.store.release_by_number("us", 2)
    assert second.state == State.FAILED and second.reason == f"orchestrator restarted mid-{stage}"
    assert world.store.pipeline_state("us").pending_merges == 1  # queued again, not lost
    [event] = said(world, 2)
    assert f"was {stage}" in event and "which drove it, is gone" in event
    assert said(world, 2, "take_over")
    assert world.disagreements(live=1) == []
    if stage == "building":  # the next release ships the commit, once
        code, output = world.run("deploy", "us", "--sha", sha(3))
        assert code == 0, output
        third = world.store.release_by_number("us", 3)
        assert [c.sha for c in third.commits] == [sha(2), sha(3)]
        assert world.disagreements(live=3) == []


def test_killed_mid_rollout_the_promotion_goes_on_from_the_hosts_real_state(
        crash_world: Make) -> None:
    world, outcome = killed(crash_world, "rollout")

    assert {h["desired"] for h in outcome.at_kill} == {2}  # the publish had gone out
    assert min(h["current_release"] for h in outcome.at_kill) == 1  # and was not through
    assert outcome.decision()["action"] == "live"
    assert "resumed the promotion: live" in said(world, 2)[0]
    second = world.store.release_by_number("us", 2)
    assert second.state == State.DONE  # went live, then was watched
    assert [r.kind for r in world.store.rollouts(second.id)] == ["promote"]
    assert world.disagreements(live=2) == []


def test_killed_mid_rollout_of_a_release_that_fails_to_boot_the_hosts_go_back(
        crash_world: Make) -> None:
    world, outcome = killed(crash_world, "rollout of a release that fails to boot")

    assert outcome.decision()["action"] == "halted"
    assert "was promoting" in said(world, 2)[0]
    second = world.store.release_by_number("us", 2)
    assert (second.state, second.halted_by) == (State.HALTED, "rollout")
    assert "hosts failed" in second.reason
    assert [r.kind for r in world.store.rollouts(second.id)] == ["promote", "revert"]
    assert world.disagreements(live=1) == []


def test_killed_while_watching_the_watch_resumes_for_what_is_left(crash_world: Make) -> None:
    world, outcome = killed(crash_world, "watching")

    assert outcome.decision()["action"] == "watching"
    assert "what is left of its watch" in said(world, 2)[0]
    second = world.store.release_by_number("us", 2)
    assert second.state == State.DONE
    watched = (second.entered(State.DONE) - second.entered(State.LIVE)).total_seconds()
    assert watched >= KILLS["watching"].watch
    # A new process has no samples from before the release: the local heartbeat is blind,
    # and blind is never called healthy.
    assert "watch ended blind" in second.reason
    assert "no data" in world.store.pipeline_state("us").hold_reason
    assert world.disagreements(live=2) == []


def test_killed_while_rolling_back_the_rollback_is_completed_and_locked(
        crash_world: Make) -> None:
    world, outcome = killed(crash_world, "rolling back")

    assert {h["desired"] for h in outcome.at_kill} == {1}
    assert outcome.decision()["action"] == "rolled_back"
    assert "rollback completed" in said(world, 2)[0]
    assert world.store.release_by_number("us", 2).state == State.ROLLED_BACK
    assert [r.outcome for r in world.store.rollbacks("us")] == ["done"]
    assert world.disagreements(live=1, lock_owner="tester") == []
    assert world.store.pipeline_state("us").lock.reason == "bad copy"


def test_a_host_agent_killed_mid_restart_reconciles_and_no_request_fails(
        crash_world: Make) -> None:
    world = crash_world(HOST_KILL)
    outcome = kill_a_host_agent(world)

    assert outcome.exit_code == 0, world.log()
    assert [o for o in outcome.load.failures() if o.host != 0] == []
    assert outcome.load.failures() == []  # host-0 too: its workers served without it
    assert outcome.started_after == outcome.started_before  # the same restart went on
    assert world.store.release_by_number("us", 2).state == State.DONE
    assert world.disagreements(live=2) == []
