"""The clock the workday and flow tests drive: time stands still while anything works, and
moves to the next deadline once everything waits."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from tests.virtual_clock import MONDAY, VirtualClock


def seconds(clock: VirtualClock) -> float:
    return (clock.now() - MONDAY).total_seconds()


def test_waiters_wake_in_deadline_order_at_their_exact_time() -> None:
    clock = VirtualClock()
    woke: list[tuple[str, float]] = []

    async def waiter(name: str, after: float) -> None:
        await clock.wait(after)
        woke.append((name, seconds(clock)))

    async def day() -> None:
        await asyncio.gather(waiter("late", 90), waiter("early", 5), waiter("mid", 30.5))

    asyncio.run(clock.run(day()))
    assert woke == [("early", 5.0), ("mid", 30.5), ("late", 90.0)]


def test_time_stands_still_while_a_thread_or_a_task_works() -> None:
    clock = VirtualClock()
    seen: dict[str, float] = {}

    def slow_stage() -> None:
        time.sleep(0.3)  # real work, as a build or a store query would be
        seen["thread done"] = seconds(clock)
        clock.sleep(20)
        seen["thread slept"] = seconds(clock)

    async def busy_task() -> None:
        for _ in range(30):
            await asyncio.sleep(0.01)  # real waits: the engine talking to its API
        seen["task done"] = seconds(clock)

    async def watcher() -> None:
        await clock.wait(1)
        seen["watcher"] = seconds(clock)

    async def day() -> None:
        await asyncio.gather(asyncio.to_thread(slow_stage), busy_task(), watcher())

    asyncio.run(clock.run(day()))
    assert seen == {"thread done": 0.0, "task done": 0.0, "watcher": 1.0, "thread slept": 20.0}


def test_work_waiting_for_a_free_thread_lets_time_move() -> None:
    clock = VirtualClock()

    async def day() -> None:
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="ship-stage"))
        await asyncio.gather(*(asyncio.to_thread(clock.sleep, 100) for _ in range(2)))

    asyncio.run(clock.run(day()))
    assert clock.now() - MONDAY == timedelta(seconds=200)  # one after the other


def test_undriven_whoever_waits_moves_time() -> None:
    clock = VirtualClock()
    clock.sleep(40)
    asyncio.run(clock.wait(2))
    assert seconds(clock) == 42.0
