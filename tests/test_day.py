"""A short workday (one simulated hour) through the real intake, flows, store and Prefect
engine, on a clock the test drives: pipeline time stands still while the engine works, so a
slow or busy machine makes the day longer in real time and never changes what happens in
it. What the store says afterwards, never timing."""

from __future__ import annotations

import asyncio
import contextvars
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest

from bench.day import DAY_START, SERIAL, TRAIN, Day, Options, figures, run_day
from orchestrator import config
from orchestrator.release import State
from orchestrator.runner import Runner
from orchestrator.runtime import Ship, use
from orchestrator.store import Release, Store
from shiptypes import Commit, FleetStatus
from tests.conftest import SIM_PIPELINES
from tests.virtual_clock import VirtualClock

pytestmark = pytest.mark.usefixtures("prefect_api")

# Release numbers fail by a seeded draw: with these shares and this seed, train#2 fails its
# synthetics gate and train#5 breaks the heartbeat (then only train#14 fails a gate, of the
# first 14).
OPTIONS = Options(hours=1.0, merges=30, burst_hour=None, gate_fail=0.27, breach=0.03,
                  unlock_after_min=5.0, redeliver=0.2, in_flight=1, seed=1358)


def run_virtual_day(options: Options, workdir: Path) -> Day:
    clock = VirtualClock(DAY_START)
    return asyncio.run(clock.run(run_day(options, workdir, calibrate_first=False, clock=clock)))


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Day:
    return run_virtual_day(OPTIONS, tmp_path_factory.mktemp("day"))


@pytest.fixture(scope="module")
def wide_day(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Day:
    """The same hour with room for 8 releases in flight, the train policy only."""
    options = Options(**{**vars(OPTIONS), "in_flight": 8, "serial": False})
    return run_virtual_day(options, tmp_path_factory.mktemp("wide-day"))


def test_releases_side_by_side_ship_every_merge_once_in_order(wide_day: Day) -> None:
    train = figures(wide_day, TRAIN)
    assert train.problems == [] and train.queued == 0
    shipped = Counter(c.sha for r in train.shipped for c in r.commits)
    assert all(n == 1 for n in shipped.values())
    by_number = {r.number: r for r in train.releases}
    overlapped = [r for r in train.releases if r.number > 1 and (
        ended := by_number[r.number - 1].entered(State.LIVE)) and r.entered(State.QUEUED) < ended]
    assert overlapped  # a release started before the one ahead of it was live
    superseded = [d for d in train.deliveries if d.own and d.own.state == State.SUPERSEDED]
    for merge in superseded:  # its commits went live with a newer release
        assert merge.live_at is not None and merge.sha not in shipped
    went_live = [r.entered(State.LIVE) for r in sorted(train.releases, key=lambda r: r.number)
                 if r.entered(State.LIVE)]
    assert went_live == sorted(went_live)  # in merge order: the fleet never went back


def test_every_merge_ships_once_on_the_train(day: Day) -> None:
    train = figures(day, TRAIN)
    assert train.problems == [] and train.queued == 0
    shipped = Counter(c.sha for r in train.shipped for c in r.commits)
    assert shipped and all(n == 1 for n in shipped.values())
    stopped = (State.HALTED, State.FAILED)
    last = max(r.number for r in train.releases)
    for merge in train.deliveries:
        assert merge.own is not None
        if merge.live_at is None:  # only the day's last release may hold merges back
            assert merge.own.number == last and merge.own.state in stopped
        else:  # live in its own release or, its own halted or overtaken, in a later one
            assert merge.live_at >= merge.merged_at
            assert merge.sha in shipped or merge.own.state in (*stopped, State.SUPERSEDED)


def test_redelivered_pushes_change_nothing(day: Day) -> None:
    redelivered = sum(m.redelivered for m in day.plan)
    assert redelivered > 0
    assert day.pushes.answers["200 duplicate"] == redelivered
    assert day.pushes.answers["200"] == len(day.plan)
    releases = day.store.releases(TRAIN, limit=1000)
    assert sum(len(r.commits) for r in releases) == len(day.plan)


def test_a_gate_failure_halts_and_its_merges_ride_the_next_release(day: Day) -> None:
    halted = day.store.release_by_number(TRAIN, 2)
    assert halted.state == State.HALTED and halted.halted_by == "gate"
    assert "synthetics" in halted.reason
    train = figures(day, TRAIN)
    later = [d.live_at for d in train.deliveries if d.own and d.own.id == halted.id]
    assert later and all(at > halted.entered(State.HALTED) for at in later)


def test_every_rollback_has_a_reason_and_answers_a_breach_once(day: Day) -> None:
    rollbacks = sorted(day.store.rollbacks(TRAIN, limit=100), key=lambda b: b.started_at)
    assert rollbacks, "the day was meant to roll back train#5"
    for rollback in rollbacks:
        assert rollback.outcome == "done" and rollback.auto and rollback.actor == "heartbeat"
        assert rollback.reason.startswith("auto-rollback: messages_created")
        assert rollback.breach_at is not None
    for earlier, later in pairwise(rollbacks):
        # A breach already answered by a rollback is never answered again.
        assert later.breach_at > earlier.finished_at
    bad = day.store.release_by_number(TRAIN, 5)
    assert bad.state == State.ROLLED_BACK
    breaches = [e for e in day.store.events(TRAIN, limit=10_000) if e.kind == "breach"]
    assert breaches and all("heartbeat breach" in e.message for e in breaches)


def test_the_person_on_call_unlocks_every_automatic_lock(day: Day) -> None:
    locks = day.store.locks(TRAIN, limit=100)
    assert locks and all(lock.auto for lock in locks)
    assert all(lock.released_by == "on-call" for lock in locks)
    assert day.store.pipeline_state(TRAIN).lock is None


def test_merges_queued_behind_a_rollout_are_built_ahead_and_claimed_whole(day: Day) -> None:
    ahead = [e for e in day.store.events(TRAIN, limit=10_000) if e.kind == "ahead"]
    assert ahead
    claimed = 0
    for event in ahead:
        release = day.store.release_by_number(TRAIN, event.data["number"])
        if release is not None and [c.sha for c in release.commits] == event.data["shas"]:
            claimed += 1
    assert claimed == len(ahead)


def test_the_serial_policy_ships_one_commit_after_each_watch(day: Day) -> None:
    releases = sorted(day.store.releases(SERIAL, limit=1000), key=lambda r: r.number)
    assert len(releases) >= 2
    assert all(len(r.commits) == 1 for r in releases)
    for before, after in pairwise(releases):
        ended = (before.entered(State.DONE) or before.entered(State.ROLLED_BACK)
                 or before.entered(State.HALTED) or before.entered(State.FAILED))
        assert ended is not None and after.entered(State.QUEUED) >= ended


def test_a_rollback_during_a_promotion_takes_the_fleet_and_halts_it(tmp_path: Path) -> None:
    """Found by the day: a rollback publishing its target while the next release is still
    starting on the hosts must win, and that release must not be recorded live."""
    loaded = config.parse(SIM_PIPELINES)
    us = loaded.pipeline("us")
    slow = us.model_copy(update={"fleet": us.fleet.model_copy(update={"fetch": 300.0})})
    loaded = loaded.model_copy(update={"pipelines": {"us": slow}})
    clock = VirtualClock(DAY_START)
    store = Store(f"sqlite:///{tmp_path}/ship.db", clock)
    runner = Runner(use(Ship(loaded, store, clock, notifiers=[])))

    def roll_back_on_first_sight(release: Release, phase: str, status: FleetStatus) -> None:
        if release.number == 3 and phase == "starting" and not rolling:
            # A person's rollback comes from outside the release's flow run (CLI, UI,
            # Slack): start it in a fresh context, not inside the promote task's, whose
            # Prefect client closes when that flow run ends.
            rolling.append(asyncio.create_task(
                runner.rollback("us", "ann", "by hand", to_number=1),
                context=contextvars.Context()))

    rolling: list[asyncio.Task] = []

    async def three_releases() -> None:
        for n in (1, 2, 3):
            if n == 3:
                runner.ship.pipeline("us").progress.append(roll_back_on_first_sight)
            commit = Commit(f"{n:040x}", "ann", f"change {n}", clock.now())
            await runner.deploy("us", [commit], "ann", watch=False)
        await asyncio.gather(*rolling)
        await runner.settle("us")

    asyncio.run(clock.run(three_releases()))
    third = store.release_by_number("us", 3)
    assert third.state == State.HALTED and third.halted_by == "rollback"
    assert "taken over by release #1" in third.reason
    state = store.pipeline_state("us")
    assert state.live.number == 1 and state.lock is not None
    assert [e.number for e in store.live_history("us")] == [1, 2, 1]
    assert runner.ship.pipeline("us").fleet.observe().release == 1
