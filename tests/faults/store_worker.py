"""One of several processes hammering one pipeline of a store with mixed operations, for
tests/faults/test_store_concurrency.py:

    python -m tests.faults.store_worker URL PIPELINE WORKER SEED START_AT OPS

From START_AT (unix time) it performs OPS random operations: record merges (its own and
ones every worker tries), take and release the lock, ship a release train through every
stage (halting some), hold and release promotions, and start and finish rollbacks. Each
operation prints one JSON line when it is over: what it was and whether it won, lost a
compare-and-set fairly, or met a concurrent change ("conflict")."""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any

from orchestrator.release import SHIPPED, IllegalTransition, State
from orchestrator.store import ConcurrentUpdate, Store
from shiptypes import Commit

STAGES = (State.BUILDING, State.PREPROD, State.GATING)


class Worker:
    def __init__(self, store: Store, pipeline: str, worker: int, rng: random.Random) -> None:
        self.store = store
        self.pipeline = pipeline
        self.me = f"w{worker}"
        self.worker = worker
        self.rng = rng
        self.count = 0

    def merge(self) -> dict[str, Any]:
        self.count += 1
        shared = self.rng.random() < 0.3
        sha = (f"{self.rng.randrange(20):040x}" if shared
               else f"{self.worker + 1:04x}{self.count:036x}")
        won = self.store.record_merge(self.pipeline, Commit(sha, self.me, "change"))
        return {"op": "merge", "sha": sha, "won": won}

    def lock(self) -> dict[str, Any]:
        claim = self.store.take_lock(self.pipeline, self.me, "hammering")
        return {"op": "lock", "won": claim.won, "lock_id": claim.lock.id if claim.won else None}

    def unlock(self) -> dict[str, Any]:
        lock = self.store.unlock(self.pipeline, self.me, "done hammering")
        return {"op": "unlock", "won": lock is not None, "lock_id": lock.id if lock else None}

    def hold(self) -> dict[str, Any]:
        reason = self.rng.choice([None, "no data"])
        return {"op": "hold", "won": self.store.set_hold(self.pipeline, reason, self.me)}

    def ship(self) -> dict[str, Any]:
        claim = self.store.start_release(self.pipeline, 5, self.me)
        if not claim.won:
            return {"op": "ship", "won": False}
        release = claim.release
        for stage in STAGES:
            release = self.store.move(release.id, stage, self.me)
        if self.rng.random() < 0.2:
            self.store.move(release.id, State.HALTED, self.me, "gate failed", "gate")
            return {"op": "ship", "won": True, "number": release.number, "end": "halted"}
        promotion = self.store.begin_promotion(release.id, self.me)
        if not promotion.won:
            self.store.move(release.id, State.HALTED, self.me, promotion.reason, "lock")
            return {"op": "ship", "won": True, "number": release.number, "end": "refused"}
        self.store.go_live(release.id, self.me)
        end = "live"
        if self.rng.random() < 0.5:
            try:
                self.store.move(release.id, State.DONE, self.me)
                end = "done"
            except IllegalTransition:  # a rollback took it back meanwhile
                end = "rolled back"
        return {"op": "ship", "won": True, "number": release.number, "end": end}

    def rollback(self) -> dict[str, Any]:
        state = self.store.pipeline_state(self.pipeline)
        targets = [r for r in self.store.releases(self.pipeline, limit=20)
                   if r.state in SHIPPED and state.live and r.id != state.live.id]
        if not targets:
            return {"op": "rollback", "won": False, "why": "nothing to roll back to"}
        target = self.rng.choice(targets)
        claim = self.store.begin_rollback(self.pipeline, state.live.id, target.id, self.me,
                                          "hammering", auto=False)
        if not claim.won:
            return {"op": "rollback", "won": False}
        locked = self.store.take_lock(self.pipeline, self.me, "rolled back").won
        ok = self.rng.random() < 0.8
        self.store.finish_rollback(claim.rollback.id, ok, self.me)
        return {"op": "rollback", "won": True, "ok": ok, "locked": locked,
                "rollback_id": claim.rollback.id}


OPERATIONS = (("merge", 5), ("ship", 3), ("lock", 1), ("unlock", 2), ("hold", 1),
              ("rollback", 1))


def main(argv: list[str]) -> int:
    url, pipeline, worker, seed, start_at, ops = argv
    rng = random.Random(int(seed))
    doer = Worker(Store(url), pipeline, int(worker), rng)
    names = [name for name, weight in OPERATIONS for _ in range(weight)]
    while time.time() < float(start_at):
        time.sleep(0.001)
    for _ in range(int(ops)):
        name = rng.choice(names)
        try:
            outcome = getattr(doer, name)()
        except (ConcurrentUpdate, IllegalTransition) as error:
            outcome = {"op": name, "won": False, "conflict": type(error).__name__}
        print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
