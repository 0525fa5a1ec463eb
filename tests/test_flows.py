"""The release, watch and rollback flows end to end on the real Prefect engine, with the
simulated providers told when to fail."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from orchestrator import config
from orchestrator.notify import Notice
from orchestrator.release import State
from orchestrator.report import stage_seconds
from orchestrator.runner import Runner
from orchestrator.runtime import Ship, use
from orchestrator.store import Store
from shiptypes import Commit
from tests.conftest import SIM_PIPELINES
from tests.virtual_clock import VirtualClock

T = TypeVar("T")

class Recorder:
    """A notifier that keeps what it was told (and can be told to break)."""

    name = "recorder"

    def __init__(self, broken: bool = False) -> None:
        self.notices: list[Notice] = []
        self.broken = broken

    def notify(self, notice: Notice) -> None:
        if self.broken:
            raise ConnectionError("chat service unreachable")
        self.notices.append(notice)

    def kinds(self) -> list[str]:
        return [n.kind for n in self.notices]


def world(tmp_path: Path, change: dict[str, Any] | None = None,
          notifiers: list[Any] | None = None) -> tuple[Runner, Store, Recorder]:
    """A Ship on the test pipelines, with `change` applied to the us pipeline's config
    (dotted paths → values)."""
    loaded = config.parse(SIM_PIPELINES)
    us = loaded.pipeline("us").model_dump(exclude={"name"})
    for path, value in (change or {}).items():
        target = us
        *parents, leaf = path.split(".")
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target[leaf] = value
    loaded = config.ShipConfig.model_validate({"pipelines": {"us": us}})
    clock = VirtualClock()
    store = Store(f"sqlite:///{tmp_path}/ship.db", clock)
    recorder = Recorder()
    use(Ship(loaded, store, clock, notifiers=[recorder, *(notifiers or [])]))
    from orchestrator.runtime import current

    return Runner(current()), store, recorder


def run(runner: Runner, work: Coroutine[Any, Any, T]) -> T:
    """Run `work` on the runner's clock, which the test drives: pipeline time stands still
    while the engine works, so every pipeline-time figure below is the same on any
    machine."""
    clock = runner.ship.clock
    return asyncio.run(clock.run(work) if isinstance(clock, VirtualClock) else work)


def deploy(runner: Runner, n: int, author: str = "ann", watch: bool = True) -> Any:
    commit = Commit(f"{n:040x}", author, f"change {n}", runner.ship.clock.now())
    return run(runner, _deploy_and_settle(runner, commit, watch))


async def _deploy_and_settle(runner: Runner, commit: Commit, watch: bool) -> Any:
    outcome = await runner.deploy("us", [commit], commit.author, watch=watch)
    await runner.settle("us")
    return outcome


pytestmark = pytest.mark.usefixtures("prefect_api")


def test_a_release_ships_and_is_watched_clean(tmp_path: Path) -> None:
    runner, store, recorder = world(tmp_path)
    outcome = deploy(runner, 1)
    release = store.release(outcome.release.id)
    assert release.state == State.DONE
    order = [State.QUEUED, State.BUILDING, State.PREPROD, State.GATING, State.PROMOTING,
             State.LIVE, State.WATCHING, State.DONE]
    times = [release.entered(s) for s in order]
    assert times == sorted(times) and None not in times
    assert {g.gate: g.passed for g in store.gate_results(release.id)} == {
        "boot": True, "smoke": True, "ci": True}
    assert release.slug is not None and release.slug.id.startswith("sha256-")
    [rollout] = store.rollouts(release.id)
    assert rollout.hosts == 50 and rollout.started == 50 and rollout.converged == 50
    assert rollout.first_request_at <= rollout.all_started_at <= rollout.converged_at
    assert store.pipeline_state("us").live.id == release.id
    assert {"live", "watch_ok"} <= set(recorder.kinds())
    live = next(n for n in recorder.notices if n.kind == "live")
    assert live.links[0].url == f"https://logs.example.com/us-east-1/us-{release.number}"


def test_a_failing_gate_halts_the_release_and_frees_the_pipeline(tmp_path: Path) -> None:
    runner, store, recorder = world(tmp_path, {"gates.1.fail_releases": [1]})
    outcome = deploy(runner, 1)
    release = store.release(outcome.release.id)
    assert release.state == State.HALTED and release.halted_by == "gate"
    assert "smoke" in release.reason
    state = store.pipeline_state("us")
    assert state.in_flight is None and state.live is None  # never reached the fleet
    assert store.rollouts(release.id) == []
    assert "halted" in recorder.kinds()


def test_a_gate_that_errors_fails_closed(tmp_path: Path) -> None:
    runner, store, _ = world(tmp_path, {"gates.0.error_releases": [1]})
    release = store.release(deploy(runner, 1).release.id)
    assert release.state == State.HALTED
    boot = next(g for g in store.gate_results(release.id) if g.gate == "boot")
    assert not boot.passed and boot.errored


def test_ci_runs_beside_the_build_and_gates_run_concurrently(tmp_path: Path) -> None:
    runner, store, _ = world(tmp_path, {"build.duration": 120, "ci.duration": 120,
                                        "gates.0.duration": 90, "gates.1.duration": 90})
    release = store.release(deploy(runner, 1, watch=False).release.id)
    # Serial work would take build 120 + CI 120 + gates 90 + 90 = 420 pipeline seconds.
    to_promotion = (release.entered(State.PROMOTING) - release.entered(State.BUILDING))
    assert to_promotion.total_seconds() < 300
    assert stage_seconds(release)["gates"] < 150  # the slowest gate, not the sum


def test_a_breach_rolls_back_locks_and_refuses_deploys_until_unlocked(tmp_path: Path) -> None:
    runner, store, recorder = world(tmp_path, {"heartbeat.source.breach_releases": [2]})
    first = deploy(runner, 1).release
    second = deploy(runner, 2).release
    assert store.release(second.id).state == State.ROLLED_BACK
    state = store.pipeline_state("us")
    assert state.live.id == first.id
    assert state.lock.auto and state.lock.owner == "heartbeat"
    assert state.lock.reason.startswith("auto-rollback: messages_created")
    assert "vs baseline" in state.lock.reason
    [rollback] = store.rollbacks("us")
    assert (rollback.from_id, rollback.to_id, rollback.outcome) == (second.id, first.id, "done")
    assert rollback.breach_at is not None
    kinds = recorder.kinds()
    assert kinds.index("breach") < kinds.index("rollback")
    assert any(n.kind == "breach" and n.level == "page" for n in recorder.notices)

    refused = deploy(runner, 3, author="dave")
    assert not refused.started and refused.lock.owner == "heartbeat"
    assert "auto-rollback" in refused.reason
    assert store.pipeline_state("us").pending_merges == 1  # the merge waits, not lost
    store.unlock("us", "carol", "fixed")
    third = run(runner, runner.ship_next("us", "carol"))
    assert third.release.state == State.DONE
    assert [c.author for c in third.release.commits] == ["dave"]


def test_three_halts_in_a_row_page_once_and_a_pass_resolves(tmp_path: Path) -> None:
    runner, store, recorder = world(tmp_path, {"gates.1.fail_releases": [1, 2, 3, 4]})
    for n in (1, 2):
        deploy(runner, n)
    assert "stall" not in recorder.kinds()
    deploy(runner, 3)
    assert recorder.kinds().count("stall") == 1
    stall = next(n for n in recorder.notices if n.kind == "stall")
    assert stall.level == "page" and "3 releases were halted" in stall.text
    deploy(runner, 4)
    assert recorder.kinds().count("stall") == 1  # still stalled: no second page
    deploy(runner, 5)
    assert recorder.kinds().count("stall_resolved") == 1
    assert store.release_by_number("us", 5).state == State.DONE


def test_a_notifier_that_fails_never_fails_the_release(tmp_path: Path) -> None:
    runner, store, _ = world(tmp_path, notifiers=[Recorder(broken=True)])
    release = store.release(deploy(runner, 1).release.id)
    assert release.state == State.DONE
    failures = [e for e in store.events("us") if e.kind == "notify_failed"]
    assert failures and "chat service unreachable" in failures[0].message


def test_too_many_failed_hosts_halt_the_rollout_and_return_hosts(tmp_path: Path) -> None:
    runner, store, _ = world(tmp_path, {"fleet.fail_releases": [2], "fleet.fail_share": 0.5})
    first = deploy(runner, 1).release
    second = store.release(deploy(runner, 2).release.id)
    assert second.state == State.HALTED and second.halted_by == "rollout"
    assert "hosts failed" in second.reason
    assert store.pipeline_state("us").live.id == first.id
    assert [r.kind for r in store.rollouts(second.id)] == ["promote", "revert"]
    assert runner.ship.pipeline("us").fleet.observe().release == 1


def test_a_manual_rollback_goes_to_the_chosen_release_and_locks(tmp_path: Path) -> None:
    runner, store, _ = world(tmp_path)
    first = deploy(runner, 1).release
    deploy(runner, 2)
    outcome = run(runner, runner.rollback("us", "bob", "bad copy", to_number=1))
    assert outcome.won and outcome.target == 1
    state = store.pipeline_state("us")
    assert state.live.id == first.id and state.lock.owner == "bob" and not state.lock.auto
    again = run(runner, runner.rollback("us", "bob", "again", to_number=5))
    assert not again.won and again.bad_input and "no release #5" in again.reason


def test_racing_rollbacks_run_once_and_the_loser_is_told(tmp_path: Path) -> None:
    runner, store, _ = world(tmp_path)
    deploy(runner, 1)
    deploy(runner, 2)

    async def race() -> list[Any]:
        return await asyncio.gather(runner.rollback("us", "alice", "x", to_number=1),
                                    runner.rollback("us", "bob", "y", to_number=1))

    outcomes = run(runner, race())
    assert sorted(o.won for o in outcomes) == [False, True]
    winner = next(o for o in outcomes if o.won)
    loser = next(o for o in outcomes if not o.won)
    assert loser.rollback_id == winner.rollback_id
    assert len(store.rollbacks("us")) == 1


def test_a_source_without_data_holds_promotions_and_never_rolls_back(tmp_path: Path) -> None:
    runner, store, recorder = world(tmp_path, {"heartbeat.source.down": True})
    release = store.release(deploy(runner, 1).release.id)
    assert release.state == State.DONE and "blind" in release.reason
    assert store.rollbacks("us") == []
    assert "no data" in store.pipeline_state("us").hold_reason
    assert "watch_ok" not in recorder.kinds() and "no_data" in recorder.kinds()


def test_releases_in_flight_side_by_side_ship_in_order(tmp_path: Path) -> None:
    """With room for three, each merge starts its own release at once; a newer release
    may overtake an older one on the fleet, never the other way round."""
    runner, store, recorder = world(tmp_path, {"train.in_flight": 3, "build.duration": 30,
                                               "rollout.stagger": 30})

    async def three_merges() -> None:
        clock = runner.ship.clock
        for n in (1, 2, 3):
            store.record_merge("us", Commit(f"{n:040x}", "ann", f"change {n}", clock.now()))
            train = runner.kick("us")
            await clock.wait(10)
        await train
        await runner.settle("us")

    run(runner, three_merges())
    releases = sorted(store.releases("us"), key=lambda r: r.number)
    assert [len(r.commits) for r in releases] == [1, 1, 1]  # nobody waited for a place
    first_live = releases[0].entered(State.LIVE) or releases[0].entered(State.SUPERSEDED)
    assert releases[1].entered(State.QUEUED) < first_live  # they overlapped
    assert store.pipeline_state("us").live.number == 3
    assert store.pipeline_state("us").flights == () and store.pending_merges("us", 9) == []
    for older in releases[:2]:
        assert older.state in (State.DONE, State.SUPERSEDED), older.describe()
    history = [e.number for e in store.live_history("us")]
    assert history == sorted(history) and history[-1] == 3
    slots = {r.preprod_slot for r in releases}
    assert len(slots) > 1  # each flew with its own pre-prod
    told = {n.release_number for n in recorder.notices if n.kind == "superseded"}
    assert told == {r.number for r in releases if r.state == State.SUPERSEDED}


def test_releases_in_flight_build_at_once_not_queued_for_threads(tmp_path: Path) -> None:
    """Every stage blocks a thread while it runs: twelve releases in flight must build side
    by side, not wait for one of asyncio's default cpu + 4 threads."""
    runner, store, _ = world(tmp_path, {"train.in_flight": 12, "train.max_commits": 1,
                                        "build.duration": 300})

    async def twelve_merges() -> None:
        clock = runner.ship.clock
        for n in range(1, 13):
            store.record_merge("us", Commit(f"{n:040x}", "ann", f"change {n}", clock.now()))
        await runner.kick("us")
        await runner.settle("us")

    run(runner, twelve_merges())
    releases = store.releases("us")
    assert len(releases) == 12
    # A build ends in pre-prod, or superseded when a newer release got to the fleet first;
    # one that waited for a thread takes a whole build longer.
    took = [((r.entered(State.PREPROD) or r.entered(State.SUPERSEDED))
             - r.entered(State.BUILDING)).total_seconds() for r in releases]
    assert max(took) < 450, took


async def _until(runner: Runner, done: Any, within_s: float = 600) -> None:
    """Wait (pipeline time) until `done()` holds."""
    clock = runner.ship.clock
    deadline = clock.now().timestamp() + within_s
    while not done():
        assert clock.now().timestamp() < deadline, "waited too long"
        await clock.wait(2)


def test_while_locked_releases_go_to_the_door_and_the_newest_ships_at_unlock(
        tmp_path: Path) -> None:
    """`train.while_locked: hold`: merges during a lock are built and gated; the release at
    the door stands aside for a newer one, and the newest promotes once unlocked."""
    runner, store, recorder = world(tmp_path, {"train.in_flight": 3, "build.duration": 20})
    store.take_lock("us", "ann", "incident 12")

    def state(number: int) -> State | None:
        found = store.release_by_number("us", number)
        return found.state if found else None

    async def merges_behind_a_lock() -> None:
        clock = runner.ship.clock
        store.record_merge("us", Commit(f"{1:040x}", "ann", "change 1", clock.now()))
        train = runner.kick("us")
        await _until(runner, lambda: state(1) == State.READY)
        store.record_merge("us", Commit(f"{2:040x}", "bob", "change 2", clock.now()))
        runner.kick("us")
        await _until(runner, lambda: state(2) == State.READY)
        assert store.pipeline_state("us").live is None  # nothing passed the lock
        store.unlock("us", "ann", "fixed")
        await train
        await runner.settle("us")

    run(runner, merges_behind_a_lock())
    first, second = store.release_by_number("us", 1), store.release_by_number("us", 2)
    assert first.state == State.SUPERSEDED and "#2, newer" in first.reason
    assert first.entered(State.SUPERSEDED) < second.entered(State.READY)  # not at unlock
    assert second.state == State.DONE and second.entered(State.PROMOTING) > \
        store.locks("us")[0].released_at
    assert [e.number for e in store.live_history("us")] == [2]
    waiting = [n.text for n in recorder.notices if "waiting at the door" in n.text]
    assert [t.split()[0] for t in waiting] == ["us#1", "us#2"]
    assert store.halts_in_a_row("us", ("gate", "rollout", "lock")) == 0


def test_while_locked_halt_starts_nothing_until_unlocked(tmp_path: Path) -> None:
    runner, store, recorder = world(tmp_path, {"train.while_locked": "halt"})
    store.take_lock("us", "ann", "freeze")

    async def merge_behind_a_lock() -> None:
        store.record_merge("us", Commit(f"{1:040x}", "ann", "change 1",
                                        runner.ship.clock.now()))
        await runner.kick("us")

    run(runner, merge_behind_a_lock())
    assert store.releases("us") == [] and store.pipeline_state("us").pending_merges == 1
    assert "refused" in recorder.kinds()
