"""Choosing the rollback target over a history with several releases in the lookback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.release import State
from orchestrator.rollback import NoRollbackTarget, choose_target
from orchestrator.store import LiveEntry

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def entry(number: int, minute: int, state: State = State.DONE, via: str = "promote") -> LiveEntry:
    return LiveEntry(release_id=100 + number, number=number, state=state,
                     since=T0 + timedelta(minutes=minute), via=via)


HISTORY = [entry(1, 0), entry(2, 10), entry(3, 25), entry(4, 31), entry(5, 38, State.WATCHING)]


def at(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


def test_the_release_live_at_the_lookback_moment_is_chosen() -> None:
    # Breach at minute 40 with a 20 minute lookback: at minute 20, release 2 was live.
    assert choose_target(HISTORY, live_id=105, at=at(20)).number == 2


def test_every_release_shipped_after_the_moment_is_rolled_back_past() -> None:
    # Releases 3, 4 and 5 all went live inside the lookback window: back to 2.
    target = choose_target(HISTORY, live_id=105, at=at(24.9))
    assert target.number == 2


def test_a_moment_exactly_at_a_release_going_live_picks_that_release() -> None:
    assert choose_target(HISTORY, live_id=105, at=at(25)).number == 3


def test_a_release_that_was_itself_rolled_back_is_skipped() -> None:
    history = [entry(1, 0), entry(2, 10, State.ROLLED_BACK), entry(1, 15, via="rollback"),
               entry(3, 30, State.WATCHING)]
    # At minute 12 release 2 was live, but it was rolled back: go to the one before it.
    assert choose_target(history, live_id=103, at=at(12)).number == 1


def test_the_live_release_is_never_its_own_target() -> None:
    history = [entry(1, 0), entry(2, 10, State.WATCHING)]
    # Release 2 has been live longer than the lookback: the target is release 1.
    assert choose_target(history, live_id=102, at=at(30)).number == 1


def test_nothing_live_at_the_moment_is_refused_with_the_reason() -> None:
    with pytest.raises(NoRollbackTarget, match="nothing was live at 2026-11-30 11:50:00Z"):
        choose_target(HISTORY, live_id=105, at=at(-10))


def test_no_fit_release_is_refused() -> None:
    history = [entry(1, 0, State.ROLLED_BACK), entry(2, 10, State.WATCHING)]
    with pytest.raises(NoRollbackTarget, match="fit to roll back to"):
        choose_target(history, live_id=102, at=at(11))
