"""The store under concurrency, on SQLite and on PostgreSQL: several processes at once
recording merges, shipping release trains, taking and releasing the lock, holding
promotions and rolling back — one of them SIGKILLed mid-way — and then no lost update, no
duplicate release, and every invariant (the audit). And a hypothesis state machine that
drives the store's API against a simple model of one pipeline."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from orchestrator import schema as t
from orchestrator.reconcile import audit
from orchestrator.release import State
from orchestrator.store import Store
from shiptypes import Commit
from tests.conftest import ROOT

WORKERS, OPS = 6, 40


def hammer(url: str, pipeline: str, kill: int | None = None) -> list[list[dict[str, Any]]]:
    """WORKERS processes at once, OPS operations each; with `kill`, that worker is SIGKILLed
    once it has done a few. Returns each worker's outcomes."""
    Store(url).close()  # migrate once, before the race
    start_at = time.time() + 2.0
    workers = [subprocess.Popen(
        [sys.executable, "-m", "tests.faults.store_worker", url, pipeline, str(n),
         str(random.randrange(1 << 30)), str(start_at), str(OPS)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in range(WORKERS)]
    said = [""] * WORKERS
    if kill is not None:
        victim = workers[kill]
        assert victim.stdout is not None
        said[kill] = "".join(victim.stdout.readline() for _ in range(5))
        victim.send_signal(signal.SIGKILL)
        said[kill] += victim.stdout.read()  # what it said before it died (buffered here)
    logs = []
    for n, worker in enumerate(workers):
        out, errors = worker.communicate(timeout=240)
        assert worker.returncode in (0, -signal.SIGKILL), errors
        logs.append([json.loads(line) for line in (said[n] + out).splitlines() if line.strip()])
    return logs


def rows(url: str, table: sa.Table, pipeline: str, *where: Any) -> list[Any]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = conn.execute(sa.select(table).where(table.c.pipeline == pipeline, *where)).all()
    engine.dispose()
    return found


def tally(logs: list[list[dict[str, Any]]]) -> Counter[str]:
    """What the workers say they did, by what it must have left in the store."""
    done: Counter[str] = Counter()
    for log in logs:
        for outcome in log:
            won = outcome["won"] is True
            done["merges"] += outcome["op"] == "merge" and won
            done["releases"] += outcome["op"] == "ship" and won
            done["locks"] += (outcome["op"] == "lock" and won) + (outcome.get("locked") is True)
            done["unlocks"] += outcome["op"] == "unlock" and won
            done["rollbacks"] += outcome["op"] == "rollback" and won
            done["refused"] += not won  # lost a compare-and-set, or found nothing to do
    return done


def found(store: Store, url: str) -> Counter[str]:
    """What the store holds, counted the same way, and its events."""
    locks = rows(url, t.locks, "us")
    kinds = Counter(e.kind for e in store.events("us", limit=100_000))
    return Counter({
        "merges": len(rows(url, t.merges, "us")), "releases": len(rows(url, t.releases, "us")),
        "locks": len(locks), "unlocks": sum(lock.released_at is not None for lock in locks),
        "rollbacks": len(rows(url, t.rollbacks, "us")), "merge events": kinds["merge"],
        "queued events": kinds["queued"], "lock events": kinds["lock"],
        "unlock events": kinds["unlock"]})


def test_processes_racing_lose_no_update_and_keep_every_invariant(store_url: str) -> None:
    logs = hammer(store_url, "us")
    assert [len(log) for log in logs] == [OPS] * WORKERS

    store = Store(store_url)
    assert audit(store, "us") == []  # one lock, one rollback, numbers 1..n, merges, events
    done, held = tally(logs), found(store, store_url)
    for what in ("merges", "releases", "locks", "unlocks", "rollbacks"):
        assert held[what] == done[what], what  # nothing won was lost, nothing extra appeared
    assert done["releases"] > 0 and done["merges"] > 0
    assert (held["merge events"], held["queued events"]) == (held["merges"], held["releases"])
    assert (held["lock events"], held["unlock events"]) == (held["locks"], held["unlocks"])
    assert all(r.outcome != "running" for r in rows(store_url, t.rollbacks, "us"))
    store.close()


def test_a_process_killed_mid_way_leaves_the_store_whole(store_url: str) -> None:
    logs = hammer(store_url, "us", kill=0)
    assert len(logs[0]) < OPS  # it really died mid-way

    store = Store(store_url)
    assert audit(store, "us") == []  # each of its transactions happened whole, or not at all
    done, held = tally(logs), found(store, store_url)
    for what in ("merges", "releases", "locks", "unlocks", "rollbacks"):
        # At most the operation it died in is missing from its own account.
        assert done[what] <= held[what] <= done[what] + 1, what
    store.close()


# --- a state machine against a model ---------------------------------------------------

SHAS = [f"{n:040x}" for n in range(1, 9)]
NEXT_STAGE = {State.QUEUED: State.BUILDING, State.BUILDING: State.PREPROD,
              State.PREPROD: State.GATING}


class StoreMachine(RuleBasedStateMachine):
    """One pipeline (a fresh one per example) driven through the store's API, and a model
    of what it must say afterwards."""

    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.store = Store(self.url)
        self.pipeline = f"p{uuid.uuid4().hex[:10]}"
        self.pending: list[str] = []
        self.merged: set[str] = set()
        self.states: dict[int, State] = {}  # release number → state
        self.ids: dict[int, int] = {}
        self.in_flight: int | None = None
        self.live: int | None = None
        self.history: list[int] = []
        self.lock: str | None = None
        self.rollback: tuple[int, int, int] | None = None  # (id, from, to)
        self.hold: str | None = None

    def teardown(self) -> None:
        self.store.close()

    @rule(sha=st.sampled_from(SHAS))
    def merge(self, sha: str) -> None:
        assert self.store.record_merge(self.pipeline, Commit(sha, "ann")) == (
            sha not in self.merged)
        if sha not in self.merged:
            self.merged.add(sha)
            self.pending.append(sha)

    @rule(most=st.integers(1, 3))
    def start(self, most: int) -> None:
        claim = self.store.start_release(self.pipeline, most, "ann")
        expected = self.lock is None and self.in_flight is None and bool(self.pending)
        assert claim.won == expected, claim.reason
        if claim.won:
            number = len(self.states) + 1
            assert claim.release.number == number
            assert [c.sha for c in claim.release.commits] == self.pending[:most]
            self.pending = self.pending[most:]
            self.states[number], self.ids[number] = State.QUEUED, claim.release.id
            self.in_flight = number

    @precondition(lambda self: self.in_flight is not None)
    @rule()
    def advance(self) -> None:
        number = self.in_flight
        assert number is not None
        state, release_id = self.states[number], self.ids[number]
        if state in NEXT_STAGE:
            self.store.move(release_id, NEXT_STAGE[state])
            self.states[number] = NEXT_STAGE[state]
        elif state in (State.GATING, State.READY):
            claim = self.store.begin_promotion(release_id)
            assert claim.won == (self.lock is None and self.hold is None)
            self.states[number] = State.PROMOTING if claim.won else State.READY
        else:
            self.store.go_live(release_id)
            self.states[number], self.live, self.in_flight = State.LIVE, number, None
            self.history.append(number)

    @precondition(lambda self: self.in_flight is not None)
    @rule(to=st.sampled_from([State.HALTED, State.FAILED]))
    def stop(self, to: State) -> None:
        number = self.in_flight
        assert number is not None
        if self.states[number] == State.QUEUED and to == State.HALTED:
            to = State.FAILED  # a queued release can only fail
        self.store.move(self.ids[number], to, reason="stopped")
        self.states[number], self.in_flight = to, None

    @rule(owner=st.sampled_from(["alice", "bob"]))
    def take_lock(self, owner: str) -> None:
        claim = self.store.take_lock(self.pipeline, owner, "why not")
        assert claim.won == (self.lock is None)
        if claim.won:
            self.lock = owner
        else:
            assert claim.lock.owner == self.lock

    @rule()
    def unlock(self) -> None:
        released = self.store.unlock(self.pipeline, "carol", "fine")
        assert (released.owner if released else None) == self.lock
        self.lock = None

    @rule(reason=st.sampled_from([None, "no data"]))
    def set_hold(self, reason: str | None) -> None:
        assert self.store.set_hold(self.pipeline, reason) == (reason != self.hold)
        self.hold = reason

    @rule(data=st.data())
    def begin_rollback(self, data: st.DataObject) -> None:
        shipped = [n for n, s in self.states.items()
                   if s in (State.LIVE, State.DONE) and n != self.live]
        if self.live is None or not shipped:
            return
        to = data.draw(st.sampled_from(shipped))
        claim = self.store.begin_rollback(self.pipeline, self.ids[self.live], self.ids[to],
                                          "bob", "model", auto=False)
        assert claim.won == (self.rollback is None)
        if claim.won:
            self.rollback = (claim.rollback.id, self.live, to)

    @precondition(lambda self: self.rollback is not None)
    @rule(ok=st.booleans())
    def finish_rollback(self, ok: bool) -> None:
        assert self.rollback is not None
        rollback_id, origin, to = self.rollback
        self.store.finish_rollback(rollback_id, ok, "bob")
        self.rollback = None
        if not ok:
            return
        since = max(i for i, n in enumerate(self.history) if n == to) if to in self.history \
            else -1
        for number in {*self.history[since + 1:], origin} - {to}:
            if self.states[number] in (State.LIVE, State.DONE):
                self.states[number] = State.ROLLED_BACK
        self.live = to
        self.history.append(to)

    @precondition(lambda self: State.LIVE in set(self.states.values()))
    @rule()
    def watched(self) -> None:
        number = next(n for n, s in self.states.items() if s == State.LIVE)
        self.store.move(self.ids[number], State.DONE)
        self.states[number] = State.DONE

    @invariant()
    def agrees_with_the_model(self) -> None:
        state = self.store.pipeline_state(self.pipeline)
        assert (state.live.number if state.live else None) == self.live
        assert (state.in_flight.number if state.in_flight else None) == self.in_flight
        assert (state.lock.owner if state.lock else None) == self.lock
        assert (state.rollback is not None) == (self.rollback is not None)
        assert state.hold_reason == self.hold
        assert state.pending_merges == len(self.pending)
        releases = {r.number: r.state for r in self.store.releases(self.pipeline, limit=100)}
        assert releases == self.states
        assert audit(self.store, self.pipeline) == []


def test_the_store_follows_a_simple_model(store_url: str) -> None:
    StoreMachine.url = store_url
    Store(store_url).close()
    run_state_machine_as_test(StoreMachine, settings=settings(
        max_examples=15, stateful_step_count=25, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))
