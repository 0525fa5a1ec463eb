"""The release state machine: the happy path, every stop, and illegal moves refused."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.release import (
    IN_FLIGHT,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    State,
    check_transition,
)

HAPPY_PATH = [State.QUEUED, State.BUILDING, State.PREPROD, State.GATING, State.PROMOTING,
              State.LIVE, State.WATCHING, State.DONE]


def test_the_happy_path_is_legal_step_by_step() -> None:
    for current, wanted in itertools.pairwise(HAPPY_PATH):
        check_transition("us#1", current, wanted)


@pytest.mark.parametrize("stage", [State.PREPROD, State.GATING, State.PROMOTING])
def test_a_release_can_halt_before_it_is_live(stage: State) -> None:
    check_transition("us#1", stage, State.HALTED)


@pytest.mark.parametrize("shipped", [State.LIVE, State.WATCHING, State.DONE])
def test_a_shipped_release_can_be_rolled_back(shipped: State) -> None:
    check_transition("us#1", shipped, State.ROLLED_BACK)


@pytest.mark.parametrize(("current", "wanted"), [
    (State.QUEUED, State.LIVE),  # skipping every gate
    (State.BUILDING, State.PROMOTING),
    (State.GATING, State.LIVE),  # promotion is a stage of its own
    (State.HALTED, State.PROMOTING),  # halted is final
    (State.ROLLED_BACK, State.LIVE),  # a rolled back release never comes back by itself
    (State.DONE, State.WATCHING),
    (State.LIVE, State.HALTED),  # once live, the way out is a rollback
    (State.FAILED, State.BUILDING),
    (State.WATCHING, State.QUEUED),
])
def test_illegal_transitions_raise_and_say_what_is_allowed(current: State, wanted: State) -> None:
    with pytest.raises(IllegalTransition) as caught:
        check_transition("us#7", current, wanted)
    message = str(caught.value)
    assert "us#7" in message and str(current) in message and str(wanted) in message


def test_terminal_states_go_nowhere_and_every_state_is_reachable() -> None:
    assert TERMINAL == {State.HALTED, State.ROLLED_BACK, State.SUPERSEDED, State.FAILED}
    reachable = {State.QUEUED} | {s for nexts in TRANSITIONS.values() for s in nexts}
    assert reachable == set(State)


def test_in_flight_states_are_the_ones_that_hold_the_pipeline() -> None:
    assert IN_FLIGHT == {State.BUILDING, State.PREPROD, State.GATING, State.READY,
                         State.PROMOTING}
    assert State.LIVE not in IN_FLIGHT  # the next release may start as soon as it is live
