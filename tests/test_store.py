"""The store, on SQLite and on PostgreSQL: release trains, compare-and-set transitions,
locks and rollbacks that exactly one racer wins (threads and processes), the event log."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest

from orchestrator.release import IllegalTransition, State
from orchestrator.store import Store
from shiptypes import Commit, FleetStatus, GateResult, Link, Slug
from tests.conftest import ROOT

STAGES = [State.BUILDING, State.PREPROD, State.GATING, State.PROMOTING]


@pytest.fixture
def store(store_url: str) -> Store:
    opened = Store(store_url)
    yield opened
    opened.close()


def commit(n: int, author: str = "ann") -> Commit:
    return Commit(f"{n:040x}", author, f"change {n}")


def ship(store: Store, pipeline: str = "us", n: int = 1) -> int:
    """Merge commit n and take it all the way to live; returns the release id."""
    store.record_merge(pipeline, commit(n))
    claim = store.start_release(pipeline, 50, "test")
    assert claim.won, claim.reason
    for state in STAGES:
        store.move(claim.release.id, state)
    store.go_live(claim.release.id)
    return claim.release.id


def test_merges_ride_together_in_one_release_train(store: Store) -> None:
    for n in range(1, 6):
        assert store.record_merge("us", commit(n))
    assert not store.record_merge("us", commit(3)), "a merge recorded twice is ignored"
    claim = store.start_release("us", max_commits=3, actor="test")
    assert claim.won and claim.release.number == 1
    assert [c.sha for c in claim.release.commits] == [commit(n).sha for n in (1, 2, 3)]
    assert claim.release.sha == commit(3).sha  # the train ships its newest commit
    busy = store.start_release("us", 3, "test")
    assert not busy.won and "us#1 is in flight" in busy.reason
    for state in STAGES:
        store.move(claim.release.id, state)
    store.go_live(claim.release.id)
    nxt = store.start_release("us", 3, "test")
    assert nxt.won and nxt.release.number == 2
    assert [c.sha for c in nxt.release.commits] == [commit(4).sha, commit(5).sha]
    assert not store.start_release("us", 3, "test").won  # in flight again


def test_nothing_merged_means_nothing_to_release(store: Store) -> None:
    claim = store.start_release("us", 10, "test")
    assert not claim.won and "nothing merged" in claim.reason


def test_transitions_are_checked_recorded_and_timed(store: Store) -> None:
    store.record_merge("us", commit(1))
    release = store.start_release("us", 10, "test").release
    with pytest.raises(IllegalTransition):
        store.move(release.id, State.LIVE)
    moved = store.move(release.id, State.BUILDING, actor="alice")
    assert moved.state == State.BUILDING
    assert moved.entered(State.BUILDING) >= moved.entered(State.QUEUED)
    kinds = [(e.kind, e.actor) for e in store.events("us", release_id=release.id)]
    assert kinds == [("queued", "test"), ("building", "alice")]
    assert store.release(release.id).state == State.BUILDING  # the refused move changed nothing


def test_a_halted_release_frees_the_pipeline(store: Store) -> None:
    store.record_merge("us", commit(1))
    release = store.start_release("us", 10, "test").release
    store.move(release.id, State.BUILDING)
    store.move(release.id, State.PREPROD)
    halted = store.move(release.id, State.HALTED, reason="boot: 503", halted_by="gate")
    assert (halted.reason, halted.halted_by) == ("boot: 503", "gate")
    assert store.pipeline_state("us").in_flight is None


def test_a_queued_release_that_stops_frees_the_pipeline(store: Store) -> None:
    store.record_merge("us", commit(1))
    release = store.start_release("us", 10, "test").release
    store.move(release.id, State.FAILED, reason="orchestrator stopped before it began")
    assert store.pipeline_state("us").in_flight is None
    store.record_merge("us", commit(2))
    assert store.start_release("us", 10, "test").won


def test_going_live_records_the_live_history(store: Store) -> None:
    first = ship(store, n=1)
    second = ship(store, n=2)
    state = store.pipeline_state("us")
    assert state.live.id == second and state.in_flight is None
    assert [e.release_id for e in store.live_history("us")] == [first, second]


def test_slug_gates_and_rollout_are_kept(store: Store) -> None:
    release_id = ship(store)
    store.set_slug(release_id, Slug("sha256-abc", "file:///slugs/abc", 10))
    store.record_gate(release_id, GateResult("boot", False, "503 from /healthz",
                                             (Link("log", "https://x/1"),), 2.5, "tail", True))
    status = FleetStatus(release=1, hosts=10, started=10, converged=9, failed=1)
    rollout = store.record_rollout(release_id, "promote", store.now(), status)
    store.update_rollout(rollout, FleetStatus(release=1, hosts=10, started=10, converged=10,
                                              failed=0))
    assert store.release(release_id).slug.id == "sha256-abc"
    [gate] = store.gate_results(release_id)
    assert (gate.gate, gate.passed, gate.errored, gate.links[0].url) == (
        "boot", False, True, "https://x/1")
    [row] = store.rollouts(release_id)
    assert (row.converged, row.failed) == (10, 0)


def test_locks_refuse_releases_and_promotions_and_name_their_owner(store: Store) -> None:
    store.record_merge("us", commit(1))
    release = store.start_release("us", 10, "test").release
    for state in STAGES[:3]:
        store.move(release.id, state)
    assert store.take_lock("us", "bob", "incident 42").won
    second = store.take_lock("us", "carol", "me too")
    assert not second.won and second.lock.owner == "bob"
    promotion = store.begin_promotion(release.id)
    assert not promotion.won and "bob" in promotion.reason and "incident 42" in promotion.reason
    store.record_merge("us", commit(2))
    refused = store.start_release("us", 10, "test")
    assert not refused.won and refused.lock.owner == "bob"
    released = store.unlock("us", "bob", "resolved")
    assert released.released_by == "bob"
    assert store.unlock("us", "bob", "again") is None
    assert store.begin_promotion(release.id).won


def test_a_hold_stops_promotion_until_released(store: Store) -> None:
    store.record_merge("us", commit(1))
    release = store.start_release("us", 10, "test").release
    for state in STAGES[:3]:
        store.move(release.id, state)
    assert store.set_hold("us", "heartbeat has no data")
    assert not store.set_hold("us", "heartbeat has no data")  # unchanged: no second event
    assert "no data" in store.begin_promotion(release.id).reason
    assert store.set_hold("us", None)
    assert store.begin_promotion(release.id).won


def test_a_rollback_is_claimed_once_and_undoes_every_later_release(store: Store) -> None:
    first = ship(store, n=1)
    second = ship(store, n=2)
    third = ship(store, n=3)
    claim = store.begin_rollback("us", third, first, "heartbeat", "breach", auto=True)
    assert claim.won
    loser = store.begin_rollback("us", third, second, "bob", "by hand", auto=False)
    assert not loser.won and loser.rollback.actor == "heartbeat"
    assert "already running" in loser.reason
    store.finish_rollback(claim.rollback.id, ok=True, actor="heartbeat")
    assert store.pipeline_state("us").live.id == first
    assert store.release(second).state == State.ROLLED_BACK
    assert store.release(third).state == State.ROLLED_BACK
    late = store.begin_rollback("us", third, second, "bob", "late click", auto=False)
    assert not late.won and late.rollback.id == claim.rollback.id and "done" in late.reason


def test_halts_in_a_row_count_gates_and_rollouts_not_locks(store: Store) -> None:
    def halt(n: int, by: str) -> None:
        store.record_merge("us", commit(n))
        release = store.start_release("us", 10, "test").release
        store.move(release.id, State.BUILDING)
        store.move(release.id, State.HALTED, reason=by, halted_by=by)

    ship(store, n=1)
    halt(2, "gate")
    halt(3, "rollout")
    assert store.halts_in_a_row("us") == 2
    halt(4, "lock")
    assert store.halts_in_a_row("us") == 0
    assert store.mark_stall("us", paged=True)
    assert not store.mark_stall("us", paged=True)  # paged once
    assert store.mark_stall("us", paged=False)
    assert not store.mark_stall("us", paged=False)


def test_the_event_log_only_grows(store: Store) -> None:
    ship(store, n=1)
    before = store.events("us")
    store.take_lock("us", "bob", "x")
    after = store.events("us")
    assert [e.id for e in after[: len(before)]] == [e.id for e in before]
    assert after[-1].kind == "lock" and after[-1].actor == "bob"
    assert [e.id for e in after] == sorted(e.id for e in after)


def test_times_come_from_the_store_clock(store_url: str) -> None:
    from shiptypes import ScaledClock

    clock = ScaledClock(3600)  # one real second is an hour of pipeline time
    scaled = Store(store_url, clock)
    scaled.record_merge("us", commit(1))
    release = scaled.start_release("us", 10, "test").release
    time.sleep(0.05)
    moved = scaled.move(release.id, State.BUILDING)
    assert moved.entered(State.BUILDING) - moved.entered(State.QUEUED) > timedelta(minutes=2)
    scaled.close()


# --- races ------------------------------------------------------------------------------------


def _race_in_threads(work, count: int = 16) -> list:
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_of_many_threads_taking_the_lock_exactly_one_wins(store: Store) -> None:
    store.ensure_pipeline("us")
    claims = _race_in_threads(lambda i: store.take_lock("us", f"user{i}", "race"))
    winners = [c for c in claims if c.won]
    assert len(winners) == 1
    assert {c.lock.owner for c in claims} == {winners[0].lock.owner}
    assert len(store.locks("us")) == 1  # the losers left no lock rows behind


def test_of_many_threads_rolling_back_exactly_one_wins(store: Store) -> None:
    first = ship(store, n=1)
    second = ship(store, n=2)
    claims = _race_in_threads(lambda i: store.begin_rollback(
        "us", second, first, f"auto{i}" if i % 2 else f"user{i}", "race", auto=bool(i % 2)))
    winners = [c for c in claims if c.won]
    assert len(winners) == 1
    assert all(c.rollback.id == winners[0].rollback.id for c in claims)
    assert len(store.rollbacks("us")) == 1


def _race_in_processes(url: str, args: list[list[str]]) -> list[dict]:
    start_at = str(time.time() + 4.0)  # after every process has opened the store
    procs = [subprocess.Popen([sys.executable, "-m", "tests.race_worker", url, start_at, *a],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for a in args]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        results.append(json.loads(stdout))
    return results


def test_of_several_processes_taking_the_lock_exactly_one_wins(store: Store) -> None:
    store.ensure_pipeline("us")
    results = _race_in_processes(store.url, [["lock", "us", f"user{i}"] for i in range(6)])
    assert sum(r["won"] for r in results) == 1
    assert len({r["holder"] for r in results}) == 1
    assert store.pipeline_state("us").lock.owner == results[0]["holder"]


def test_of_an_auto_and_a_manual_rollback_in_two_processes_exactly_one_runs(store: Store) -> None:
    first = ship(store, n=1)
    second = ship(store, n=2)
    results = _race_in_processes(store.url, [
        ["rollback", "us", "auto-heartbeat", str(second), str(first)],
        ["rollback", "us", "bob", str(second), str(first)],
        ["rollback", "us", "carol", str(second), str(first)],
    ])
    assert sum(r["won"] for r in results) == 1
    winner = next(r for r in results if r["won"])
    assert all(r["holder"] == winner["holder"] for r in results)
    assert len(store.rollbacks("us")) == 1


def test_releases_fly_side_by_side_up_to_in_flight_each_with_its_own_preprod(
        store: Store) -> None:
    claims = []
    for n in (1, 2, 3):
        store.record_merge("us", commit(n))
        claims.append(store.start_release("us", 50, "test", in_flight=2))
    first, second, third = claims
    assert first.won and second.won and not third.won
    assert (first.release.preprod_slot, second.release.preprod_slot) == (0, 1)
    assert third.reason == "us#2, us#1 are in flight"
    assert [r.number for r in store.pipeline_state("us").flights] == [2, 1]

    store.move(first.release.id, State.BUILDING)
    store.move(first.release.id, State.FAILED, reason="build broke")
    again = store.start_release("us", 50, "test", in_flight=2)
    assert again.won and again.release.preprod_slot == 0  # the freed pre-prod
    assert [c.sha for c in again.release.commits] == [commit(3).sha]


def test_an_older_release_overtaken_by_a_newer_one_is_superseded_not_promoted(
        store: Store) -> None:
    ids = []
    for n in (1, 2, 3):
        store.record_merge("us", commit(n))
        claim = store.start_release("us", 50, "test", in_flight=3)
        for state in (State.BUILDING, State.PREPROD, State.GATING):
            store.move(claim.release.id, state)
        ids.append(claim.release.id)
    one, two, three = ids
    assert store.begin_promotion(two).won
    assert store.supersede_if_overtaken(three) is None  # newer than what reached the fleet

    late = store.begin_promotion(one)  # would take the fleet back to an older release
    assert not late.won and late.release.state == State.SUPERSEDED
    assert "us#2 reached the fleet first" in late.reason

    assert store.begin_promotion(three).won  # overtakes #2 mid-rollout
    assert store.go_live(three).state == State.LIVE
    overtaken = store.go_live(two)  # every host has 2 or newer, but 3 went live first
    assert overtaken.state == State.SUPERSEDED and "us#3" in overtaken.reason
    assert store.pipeline_state("us").live.number == 3
    assert [e.number for e in store.live_history("us")] == [3]
    assert store.pipeline_state("us").flights == ()


def test_behind_a_lock_releases_wait_ready_and_the_older_stands_aside(store: Store) -> None:
    store.take_lock("us", "bob", "incident 9")
    store.record_merge("us", commit(1))
    assert not store.start_release("us", 50, "test", in_flight=3).won
    first = store.start_release("us", 50, "test", in_flight=3, behind_lock=True).release
    for state in (State.BUILDING, State.PREPROD, State.GATING):
        store.move(first.id, state)
    waiting = store.begin_promotion(first.id)
    assert not waiting.won and waiting.release.state == State.READY and waiting.lock
    assert store.begin_promotion(first.id, newest_only=True).release.state == State.READY

    store.record_merge("us", commit(2))  # merged behind it: perhaps the fix
    aside = store.begin_promotion(first.id, newest_only=True)
    assert aside.release.state == State.SUPERSEDED and "merges newer" in aside.reason
    second = store.start_release("us", 50, "test", in_flight=3, behind_lock=True).release
    assert [c.sha for c in second.commits] == [commit(2).sha]
    for state in (State.BUILDING, State.PREPROD, State.GATING):
        store.move(second.id, state)
    assert store.begin_promotion(second.id).release.state == State.READY
    store.unlock("us", "bob", "reverted")
    assert store.begin_promotion(second.id, newest_only=True).won
