"""Reconcile on start, in one process on the simulated pipelines: each stage a lost process
can leave a release in, the owner checks (a live driver, a driver on another host, a
Prefect run that ended), racing reconcilers, stage deadlines, and the consistency audit."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from orchestrator import moves
from orchestrator.reconcile import audit, overdue, page_overdue, reconcile
from orchestrator.release import State
from orchestrator.runner import Runner
from orchestrator.store import Store
from tests.faults.conftest import left_at, lost_claim, restart
from tests.test_flows import deploy, run, world

pytestmark = pytest.mark.usefixtures("prefect_api")


def settled(runner: Runner, **options: Any) -> list[Any]:
    """Reconcile, then wait for the watches it resumed."""

    async def go() -> list[Any]:
        outcomes = await reconcile(runner.ship, **options)
        await runner.settle("us")
        return outcomes

    return run(runner, go())


def kinds(store: Store, release_id: int) -> list[str]:
    return [e.kind for e in store.events("us", release_id=release_id)]


def idle_fleet(runner: Runner) -> Any:
    """The fleet once every host has converged (or failed): what the audit compares."""
    fleet = runner.ship.pipeline("us").fleet
    while not (status := fleet.observe()).done:
        runner.ship.clock.sleep(1)
    return status


@pytest.mark.parametrize("state", [State.QUEUED, State.BUILDING, State.PREPROD, State.GATING])
def test_a_release_left_before_promotion_fails_and_its_commits_ride_the_next(
        tmp_path: Path, state: State) -> None:
    runner, store, recorder = world(tmp_path)
    first = deploy(runner, 1).release
    left = left_at(store, 2, state)
    lost_claim(store, left.id)
    runner = restart(runner, [recorder])

    [outcome] = settled(runner)

    release = store.release(left.id)
    assert release.state == State.FAILED
    assert release.reason == f"orchestrator restarted mid-{state}"
    assert (outcome.action, outcome.was) == ("failed", state.value)
    pipeline = store.pipeline_state("us")
    assert pipeline.in_flight is None and pipeline.live.id == first.id
    assert pipeline.pending_merges == 1  # the commit is queued again, not lost
    assert ["take_over", "failed", "requeued", "reconcile"] == kinds(store, left.id)[-4:]
    assert any(n.kind == "halted" and "restarted" in n.text for n in recorder.notices)
    again = deploy(runner, 3)  # the next release carries both commits
    assert again.release.number == 3 and again.release.state == State.DONE
    assert [c.sha for c in again.release.commits] == [f"{n:040x}" for n in (2, 3)]
    assert audit(store, "us", idle_fleet(runner)) == []


def test_a_release_whose_driver_still_runs_is_left_alone(tmp_path: Path) -> None:
    runner, store, _ = world(tmp_path)
    left = left_at(store, 1, State.GATING)  # claimed by this very process: alive

    [outcome] = settled(runner)

    assert outcome.action == "left" and "still drives it" in outcome.detail
    assert store.release(left.id).state == State.GATING
    assert "take_over" not in kinds(store, left.id)


def test_a_driver_on_another_host_is_left_unless_taken_over_by_hand(tmp_path: Path) -> None:
    runner, store, recorder = world(tmp_path)
    left = left_at(store, 1, State.BUILDING)
    lost_claim(store, left.id, host="build-box-7")

    [outcome] = settled(runner)
    assert outcome.action == "left" and "cannot be seen from here" in outcome.detail
    assert store.release(left.id).state == State.BUILDING

    [outcome] = settled(restart(runner, [recorder]), take_over=True)
    assert outcome.action == "failed" and "by hand from pid" in outcome.detail
    assert store.release(left.id).state == State.FAILED


def test_of_racing_reconcilers_exactly_one_takes_a_release_over(store_url: str) -> None:
    store = Store(store_url)
    left = left_at(store, 1, State.BUILDING)
    lost_claim(store, left.id)
    seen = store.driver(left.id)
    start = threading.Barrier(8)
    won: list[bool] = []

    def race() -> None:
        racer = Store(store_url)
        start.wait()
        won.append(racer.take_over(left.id, seen, "race"))
        racer.close()

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False] * 7 + [True]
    assert kinds(store, left.id).count("take_over") == 1
    store.close()


def test_promoting_with_hosts_on_the_release_goes_on_to_live_and_is_watched(
        tmp_path: Path) -> None:
    runner, store, recorder = world(tmp_path)
    deploy(runner, 1)
    left = left_at(store, 2, State.PROMOTING)
    lost_claim(store, left.id)
    runner = restart(runner, [recorder])
    runner.ship.pipeline("us").fleet.publish(left.ref())  # the lost process had told the fleet

    [outcome] = settled(runner)

    assert outcome.action == "live" and "resumed the promotion" in outcome.detail
    assert store.release(left.id).state == State.DONE  # went live, then watched clean
    assert store.pipeline_state("us").live.id == left.id
    assert [r.kind for r in store.rollouts(left.id)] == ["promote"]
    assert runner.ship.pipeline("us").fleet.observe().release == 2
    assert audit(store, "us", idle_fleet(runner)) == []


def test_a_crash_mid_overtake_settles_both_releases_forward(tmp_path: Path) -> None:
    """Two releases side by side, the newer published while the older rolled out, then the
    process died: both go on from the hosts' real state and the fleet never goes back."""
    runner, store, recorder = world(tmp_path, {"train.in_flight": 2})
    deploy(runner, 1)
    older = left_at(store, 2, State.PROMOTING, in_flight=2)
    newer = left_at(store, 3, State.PROMOTING, in_flight=2)
    for left in (older, newer):
        lost_claim(store, left.id)
    runner = restart(runner, [recorder])
    fleet = runner.ship.pipeline("us").fleet
    fleet.publish(older.ref())
    fleet.publish(newer.ref())  # hosts still waiting out their stagger take #3

    settled(runner)

    assert store.release(newer.id).state == State.DONE
    assert store.release(older.id).state in (State.DONE, State.SUPERSEDED)
    history = [e.number for e in store.live_history("us")]
    assert history == sorted(history) and history[-1] == 3  # never back in time
    assert all(r.kind == "promote" for left in (older, newer) for r in store.rollouts(left.id))
    assert idle_fleet(runner).release == 3
    assert audit(store, "us", idle_fleet(runner)) == []


def test_promoting_with_hosts_in_an_unknown_state_returns_them_and_halts(
        tmp_path: Path) -> None:
    runner, store, recorder = world(tmp_path)
    first = deploy(runner, 1).release
    left = left_at(store, 2, State.PROMOTING)
    lost_claim(store, left.id)
    runner = restart(runner, [recorder])  # a simulated fleet cannot say what its hosts run

    [outcome] = settled(runner)

    release = store.release(left.id)
    assert (release.state, release.halted_by) == (State.HALTED, "restart")
    assert "orchestrator restarted mid-promotion" in release.reason
    assert outcome.action == "halted"
    assert [r.kind for r in store.rollouts(left.id)] == ["revert"]
    fleet = idle_fleet(runner)
    assert fleet.release == first.number  # the previous release was published again
    state = store.pipeline_state("us")
    assert state.live.id == first.id and state.in_flight is None and state.pending_merges == 1
    assert audit(store, "us", fleet) == []


def test_promoting_never_published_halts_with_nothing_to_undo(tmp_path: Path) -> None:
    runner, store, recorder = world(tmp_path)
    first = deploy(runner, 1).release
    left = left_at(store, 2, State.PROMOTING)
    lost_claim(store, left.id)
    runner = restart(runner, [recorder])
    runner.ship.pipeline("us").fleet.publish(first.ref())  # hosts still on #1

    settled(runner)

    release = store.release(left.id)
    assert release.state == State.HALTED and "before the fleet was told" in release.reason
    assert store.rollouts(left.id) == []  # nothing was published again


def test_a_lock_taken_while_promoting_wins_over_resuming(tmp_path: Path) -> None:
    runner, store, recorder = world(tmp_path)
    first = deploy(runner, 1).release
    left = left_at(store, 2, State.PROMOTING)
    lost_claim(store, left.id)
    store.take_lock("us", "carol", "incident")
    runner = restart(runner, [recorder])
    runner.ship.pipeline("us").fleet.publish(left.ref())

    settled(runner)

    assert store.release(left.id).state == State.HALTED
    assert "locked by hand by carol" in store.release(left.id).reason
    assert runner.ship.pipeline("us").fleet.observe().release == first.number


def test_a_watch_left_running_is_resumed_for_what_is_left_of_it(tmp_path: Path) -> None:
    runner, store, recorder = world(tmp_path)
    deploy(runner, 1)
    left = left_at(store, 2, State.WATCHING)
    lost_claim(store, left.id, flow="watch")
    runner = restart(runner, [recorder])

    [outcome] = settled(runner)

    release = store.release(left.id)
    assert outcome.action == "watching" and release.state == State.DONE
    assert release.reason is None  # watched with data, and healthy
    watched = (release.entered(State.DONE) - release.entered(State.LIVE)).total_seconds()
    assert watched >= runner.ship.config.pipeline("us").heartbeat.watch
    assert any(n.kind == "watch_ok" for n in recorder.notices)


def test_a_resumed_watch_still_catches_a_breach_and_rolls_back(tmp_path: Path) -> None:
    runner, store, recorder = world(tmp_path, {"heartbeat.source.breach_releases": [2]})
    first = deploy(runner, 1).release
    left = left_at(store, 2, State.LIVE)  # the lost process never began the watch
    lost_claim(store, left.id)
    runner = restart(runner, [recorder])

    settled(runner)

    assert store.release(left.id).state == State.ROLLED_BACK
    state = store.pipeline_state("us")
    assert state.live.id == first.id and state.lock.owner == "heartbeat"
    assert "breach" in kinds(store, left.id)


def test_a_rollback_left_running_is_completed_and_the_pipeline_locked(tmp_path: Path) -> None:
    runner, store, recorder = world(tmp_path)
    first = deploy(runner, 1).release
    second = deploy(runner, 2).release
    claim = store.begin_rollback("us", second.id, first.id, "bob", "bad copy", auto=False)
    lost_claim(store, second.id, flow="rollback", rollback_id=claim.rollback.id)
    runner = restart(runner, [recorder])  # the lost process had not locked yet

    [outcome] = settled(runner)

    assert outcome.action == "rolled_back"
    state = store.pipeline_state("us")
    assert state.live.id == first.id and state.rollback is None
    assert state.lock.owner == "bob" and state.lock.reason == "bad copy"
    assert store.release(second.id).state == State.ROLLED_BACK
    assert [r.outcome for r in store.rollbacks("us")] == ["done"]
    assert runner.ship.pipeline("us").fleet.observe().release == first.number
    assert audit(store, "us", idle_fleet(runner)) == []


def test_a_driver_whose_flow_run_ended_is_gone_even_if_its_process_runs(
        tmp_path: Path) -> None:
    from prefect import flow

    runner, store, recorder = world(tmp_path)
    left = left_at(store, 1, State.BUILDING)

    @flow(name="gives-up")
    def gives_up() -> None:
        moves.remember_run(runner.ship.pipeline("us"), left.id)  # then ends early

    gives_up()
    [outcome] = settled(restart(runner, [recorder]))
    assert outcome.action == "failed" and "its flow run ended completed" in outcome.detail


def test_the_flow_run_of_a_lost_process_is_marked_crashed_in_prefect(tmp_path: Path) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    runner, store, recorder = world(tmp_path)
    left = left_at(store, 1, State.GATING)

    @flow(name="lost-release")
    def lost() -> None:
        pass

    async def running_run() -> str:
        async with get_client() as client:
            run = await client.create_flow_run(lost, state=Running())
            return str(run.id)

    async def state_of(run_id: str) -> str:
        async with get_client() as client:
            return (await client.read_flow_run(UUID(run_id))).state.type.value

    run_id = asyncio.run(running_run())
    lost_claim(store, left.id, flow_run_id=run_id)
    settled(restart(runner, [recorder]))
    assert asyncio.run(state_of(run_id)) == "CRASHED"
    assert store.release(left.id).state == State.FAILED


def test_a_stage_overstaying_its_deadline_pages_once(tmp_path: Path) -> None:
    runner, store, recorder = world(tmp_path, {"deadlines.building": 30})
    left = left_at(store, 1, State.BUILDING)
    assert overdue(runner.ship) == []
    runner.ship.clock.sleep(40)  # pipeline seconds

    [late] = overdue(runner.ship)
    assert (late.stage, late.release.id) == ("building", left.id)
    assert len(page_overdue(runner.ship)) == 1
    assert page_overdue(runner.ship) == []  # paged once per stay
    [page] = [n for n in recorder.notices if n.kind == "stall"]
    assert page.level == "page" and "no progress in building" in page.text
    assert page.details == {"stage": "building"}
    assert kinds(store, left.id).count("overdue") == 1


def test_a_release_waiting_out_a_lock_is_not_overdue_until_the_unlock(tmp_path: Path) -> None:
    runner, store, _ = world(tmp_path, {"deadlines.ready": 6})
    waiting = left_at(store, 1, State.GATING)
    store.take_lock("us", "bob", "incident 5")
    assert store.begin_promotion(waiting.id).release.state == State.READY
    runner.ship.clock.sleep(30)
    assert overdue(runner.ship) == []  # a person holds the lock: not a stall
    store.unlock("us", "bob", "fixed")
    runner.ship.clock.sleep(3)
    assert overdue(runner.ship) == []  # counted from the unlock
    runner.ship.clock.sleep(4)
    assert [(o.stage, o.release.id) for o in overdue(runner.ship)] == [("ready", waiting.id)]


def test_a_watch_past_its_end_and_a_rollback_that_hangs_are_overdue(tmp_path: Path) -> None:
    runner, store, _ = world(tmp_path, {"deadlines.watching": 10, "deadlines.rollback": 10,
                                        "heartbeat.watch": 20})
    first = deploy(runner, 1).release
    watching = left_at(store, 2, State.WATCHING)
    store.begin_rollback("us", watching.id, first.id, "bob", "stuck", auto=False)
    runner.ship.clock.sleep(35)
    assert {(o.stage, o.release.id) for o in overdue(runner.ship)} == {
        ("watching", watching.id), ("rollback", watching.id)}


def test_the_watchdog_of_a_serving_process_pages_while_it_runs(tmp_path: Path) -> None:
    runner, store, recorder = world(tmp_path, {"deadlines.building": 60})
    left_at(store, 1, State.BUILDING)  # driven by this process, which then hangs

    async def serve_a_while() -> None:
        await reconcile(runner.ship, runner)  # with a runner: the watchdog keeps checking
        await runner.ship.clock.wait(90)

    run(runner, serve_a_while())
    assert [n.kind for n in recorder.notices].count("stall") == 1


def test_the_audit_finds_what_disagrees(tmp_path: Path) -> None:
    from orchestrator import schema as t

    runner, store, _ = world(tmp_path)
    first = deploy(runner, 1).release
    assert audit(store, "us") == []
    with store.engine.begin() as conn:
        conn.execute(t.pipelines.update().values(in_flight_id=first.id))
        conn.execute(t.merges.update().values(release_id=None))
    problems = audit(store, "us", runner.ship.pipeline("us").fleet.observe())
    assert any("in flight" in p for p in problems)
    assert any("queued and went live already" in p for p in problems)


class UnreachableFleet:
    """A fleet whose API does not answer."""

    def publish(self, release: Any) -> None:
        raise ConnectionError("fleet API unreachable")

    def observe(self) -> Any:
        raise ConnectionError("fleet API unreachable")


def test_trouble_on_one_pipeline_leaves_the_others_settled_and_is_retried(
        tmp_path: Path) -> None:
    from orchestrator import config
    from orchestrator.runtime import Ship, use
    from tests.conftest import SIM_PIPELINES
    from tests.test_flows import Recorder
    from tests.virtual_clock import VirtualClock

    clock = VirtualClock()
    store = Store(f"sqlite:///{tmp_path}/ship.db", clock)
    ship = use(Ship(config.parse(SIM_PIPELINES), store, clock, notifiers=[Recorder()]))
    us, eu = left_at(store, 1, State.PROMOTING, "us"), left_at(store, 1, State.BUILDING, "eu")
    lost_claim(store, us.id)
    lost_claim(store, eu.id)
    fleet = ship.pipeline("us").fleet
    ship.pipeline("us").fleet = UnreachableFleet()

    outcomes = asyncio.run(clock.run(reconcile(ship)))

    assert {(o.pipeline, o.action) for o in outcomes} == {("us", "error"), ("eu", "failed")}
    assert store.release(us.id).state == State.PROMOTING
    assert any("reconcile failed: ConnectionError" in e.message for e in store.events("us"))
    ship.pipeline("us").fleet = fleet  # the fleet answers again: the next reconcile settles it
    [again] = asyncio.run(clock.run(reconcile(ship)))
    assert again.action == "halted" and "its flow run ended failed" in again.detail
