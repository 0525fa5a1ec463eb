"""One store operation at an agreed moment, for the cross-process race tests:

    python -m tests.race_worker URL START_AT lock PIPELINE ACTOR
    python -m tests.race_worker URL START_AT rollback PIPELINE ACTOR FROM_ID TO_ID

Prints the claim as JSON."""

from __future__ import annotations

import json
import sys
import time

from orchestrator.store import Store


def main(argv: list[str]) -> int:
    url, start_at, op, pipeline, actor, *rest = argv
    store = Store(url)
    while time.time() < float(start_at):
        time.sleep(0.0005)
    if op == "lock":
        claim = store.take_lock(pipeline, actor, f"race by {actor}")
        holder = claim.lock.owner if claim.lock else None
    else:
        claim = store.begin_rollback(pipeline, int(rest[0]), int(rest[1]), actor, "race",
                                     auto=actor.startswith("auto"))
        holder = claim.rollback.actor if claim.rollback else None
    print(json.dumps({"won": claim.won, "holder": holder, "reason": claim.reason}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
