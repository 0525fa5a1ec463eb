"""The release model: an explicit state machine.

    queued → building → preprod → gating → (ready →) promoting → live → watching → done
                 ↘          ↘          ↘                  ↘            ↘         ↘
                  failed     halted     halted             halted    rolled_back  rolled_back
                 ↘          ↘          ↘                  ↘
                  superseded (a newer release reached the fleet first and carries its commits)

`ready`: the release passed its gates and waits at the door, because the pipeline is locked
or holds promotions (no heartbeat data). A release that goes straight through never enters it.

A release is *in flight* (it holds one of its pipeline's `train.in_flight` places) from
building until it is live or has stopped; watching overlaps the next release, which is what
lets a pipeline ship many times an hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    QUEUED = "queued"
    BUILDING = "building"
    PREPROD = "preprod"
    GATING = "gating"
    READY = "ready"
    PROMOTING = "promoting"
    LIVE = "live"
    WATCHING = "watching"
    DONE = "done"
    HALTED = "halted"
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"
    FAILED = "failed"


PIPELINE_STAGES = (State.BUILDING, State.PREPROD, State.GATING, State.READY, State.PROMOTING)
_BEFORE_LIVE = {State.FAILED, State.HALTED, State.SUPERSEDED}

TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.BUILDING, State.SUPERSEDED, State.FAILED}),
    State.BUILDING: frozenset({State.PREPROD, *_BEFORE_LIVE}),
    State.PREPROD: frozenset({State.GATING, *_BEFORE_LIVE}),
    State.GATING: frozenset({State.READY, State.PROMOTING, *_BEFORE_LIVE}),
    State.READY: frozenset({State.PROMOTING, *_BEFORE_LIVE}),
    State.PROMOTING: frozenset({State.LIVE, *_BEFORE_LIVE}),
    State.LIVE: frozenset({State.WATCHING, State.DONE, State.ROLLED_BACK}),
    State.WATCHING: frozenset({State.DONE, State.ROLLED_BACK}),
    # A release that was watched clean can still be rolled back by hand, or rolled back
    # past when a later release breaches within the lookback.
    State.DONE: frozenset({State.ROLLED_BACK}),
    State.HALTED: frozenset(),
    State.ROLLED_BACK: frozenset(),
    State.SUPERSEDED: frozenset(),
    State.FAILED: frozenset(),
}

# States in which a release holds a place in its pipeline: with `train.in_flight` of them
# taken, no other release may start.
IN_FLIGHT = frozenset(PIPELINE_STAGES)
# A release holds its pipeline from the moment it is queued (the train is claimed) until it
# is live or has stopped.
HOLDS_PIPELINE = IN_FLIGHT | {State.QUEUED}
# States of a release that has reached the fleet and not been undone.
SHIPPED = frozenset({State.LIVE, State.WATCHING, State.DONE})
TERMINAL = frozenset(s for s, nexts in TRANSITIONS.items() if not nexts)


class IllegalTransition(Exception):
    def __init__(self, release: str, current: State, wanted: State) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing: it is final"
        super().__init__(f"release {release} cannot go from {current} to {wanted} "
                         f"(from {current} it may go to {allowed})")
        self.current = current
        self.wanted = wanted


def check_transition(release: str, current: State | str, wanted: State | str) -> None:
    current, wanted = State(current), State(wanted)
    if wanted not in TRANSITIONS[current]:
        raise IllegalTransition(release, current, wanted)

# Ids, release numbers and counts are sa.Integer columns in the store: 32-bit on PostgreSQL
# (SQLite's are 64-bit). A number from outside beyond this names nothing, rather than failing
# the query. Here, not in orchestrator.store, so that the CLI checks it without SQLAlchemy.
ID_MAX = 2**31 - 1


@dataclass(frozen=True)
class RollbackOutcome:
    """What a rollback came to, wherever it ran (a flow, the CLI, through ship serve)."""

    won: bool
    reason: str
    target: int | None = None  # release number rolled back to
    rollback_id: int | None = None
    bad_input: bool = False
