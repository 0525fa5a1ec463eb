"""A pipeline clock the test controls: time stands still while anything in the event loop or
its worker threads is working, and jumps to the next deadline once everything waits for the
clock (or for something that waits for it). A slow machine makes a simulated day take
longer in real time; it never changes what happens in it.

"Everything waits" is read from the loop's tasks and the stage threads' stacks: a task is
parked when it awaits the clock, an asyncio lock, event, queue or another task; a stage
thread is parked inside `sleep` or waiting on another stage thread's future. Anything else
(a Prefect API call, a store query, a thread between two sleeps) is work, and time waits.
Work in other threads (Prefect's own, a notifier's outbox, a fake vendor) is not seen:
it must not decide what a pipeline does next."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import CodeType, FrameType
from typing import Any, TypeVar

T = TypeVar("T")
PARKED_IN_ASYNCIO = {"locks.py", "queues.py"}
STAGE_THREADS = ("ship-stage", "asyncio_", "ship-ahead")  # where pipeline work runs
MONDAY = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)


@dataclass
class _Timer:
    wake: Callable[[], None]
    cancelled: bool = False


class Stuck(RuntimeError):
    """Nothing waited on the clock while something kept working for the whole deadline."""


class VirtualClock:
    """Driven by `run`; undriven (a test between two runs), whoever waits moves it."""

    speed = float("inf")

    def __init__(self, origin: datetime = MONDAY) -> None:
        self._now = origin
        self._lock = threading.Lock()
        self._timers: list[tuple[datetime, int, _Timer]] = []
        self._order = itertools.count()
        self.steps = 0
        self._driven = False  # run() drives it: time moves only when everything waits

    def now(self) -> datetime:
        with self._lock:
            return self._now

    async def wait(self, seconds: float) -> None:
        if seconds <= 0 or not self._driven:
            self._move(seconds)
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        due: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(lambda: due.done() or due.set_result(None))

        timer = self._at(seconds, wake)
        try:
            await _clock_wait(due)
        finally:
            timer.cancelled = True  # a cancelled wait holds time up no more

    def sleep(self, seconds: float) -> None:
        if seconds <= 0 or not self._driven:
            self._move(seconds)
            return
        woken = threading.Event()
        self._at(seconds, woken.set)
        _clock_sleep(woken)

    def _move(self, seconds: float) -> None:
        """Undriven, whoever waits moves time: a test's own `sleep` between two looks."""
        if seconds <= 0:
            return
        with self._lock:
            until = self._now + timedelta(seconds=seconds)
        while self._next_due() is not None and self._next_due() <= until and self._advance():
            pass
        with self._lock:
            self._now = max(self._now, until)

    def _next_due(self) -> datetime | None:
        with self._lock:
            return self._timers[0][0] if self._timers else None

    def _at(self, seconds: float, wake: Callable[[], None]) -> _Timer:
        timer = _Timer(wake)
        with self._lock:
            due = self._now + timedelta(seconds=seconds)
            heapq.heappush(self._timers, (due, next(self._order), timer))
        return timer

    def _advance(self) -> bool:
        """Move to the earliest deadline and wake everything due then. False: none."""
        with self._lock:
            while self._timers and self._timers[0][2].cancelled:
                heapq.heappop(self._timers)
            if not self._timers:
                return False
            self._now = max(self._now, self._timers[0][0])
            due = []
            while self._timers and self._timers[0][0] <= self._now:
                due.append(heapq.heappop(self._timers)[2])
            self.steps += 1
        for timer in due:
            if not timer.cancelled:
                timer.wake()
        return True

    async def _drive(self, stuck_after_s: float) -> None:
        """Advance time whenever everything waits; runs until cancelled. Raises Stuck when
        the loop never rests for `stuck_after_s` real seconds (a generous deadline: it
        means a busy loop, never a slow machine)."""
        me = asyncio.current_task()
        rested = time.monotonic()
        pause = 0.0
        while True:
            await asyncio.sleep(pause)
            if _quiet(me) and (await _yield_then(lambda: _quiet(me))):
                self._advance()
                rested, pause = time.monotonic(), 0.0
                continue
            if time.monotonic() - rested > stuck_after_s:
                raise Stuck("nothing waited on the clock for "
                            f"{stuck_after_s:.0f} s: {', '.join(_busy(me)[:5])}")
            # Look often right after a step, less while the engine keeps working: every
            # look holds the interpreter lock the work needs.
            pause = min(0.02, max(0.0005, pause * 2))

    async def run(self, work: Coroutine[Any, Any, T], stuck_after_s: float = 600.0) -> T:
        """Run `work` with this clock driven beside it."""
        self._driven = True
        driving = asyncio.create_task(self._drive(stuck_after_s))
        running = asyncio.ensure_future(work)
        try:
            await asyncio.wait({driving, running}, return_when=asyncio.FIRST_COMPLETED)
            if driving.done():
                running.cancel()
                driving.result()
            return await running
        finally:
            self._driven = False
            driving.cancel()


async def _clock_wait(due: asyncio.Future[None]) -> None:
    await due


def _clock_sleep(woken: threading.Event) -> None:
    woken.wait()


async def _yield_then(check: Callable[[], bool]) -> bool:
    """Let callbacks already scheduled run, then check again."""
    await asyncio.sleep(0)
    return check()


# --- what is working ---------------------------------------------------------------------------

_PARKED_CODES: set[CodeType] = {_clock_wait.__code__, _clock_sleep.__code__}


def _quiet(me: asyncio.Task | None) -> bool:
    return not _busy(me)


def _busy(me: asyncio.Task | None) -> list[str]:
    """What is working now, if anything."""
    busy, in_threads = [], 0
    for task in asyncio.all_tasks():
        if task is me or task.done():
            continue
        state = _task_state(task)
        if state == "thread":
            in_threads += 1
        elif state != "parked":
            busy.append(f"task {task.get_name()} in {state}")
    running, parked, idle = _stage_threads()
    busy += [f"thread {name}" for name in running]
    if in_threads > parked and idle:
        # Work handed to the pool and not yet taken, or done and not yet handed back.
        # With no idle thread it waits for one to be free, which only time brings.
        busy.append(f"{in_threads} task(s) await a thread, {parked} stage thread(s) wait")
    return busy


def _task_state(task: asyncio.Task) -> str:
    waiter = getattr(task, "_fut_waiter", None)
    if waiter is None or waiter.done():
        return "ready"
    if isinstance(waiter, asyncio.Task) or type(waiter).__name__ == "_GatheringFuture":
        return "parked"  # on other tasks, which are judged on their own
    chain = _chain(task.get_coro())
    if not chain:
        return "?"
    code = chain[-1]
    if code in _PARKED_CODES:
        return "parked"
    file = code.co_filename.rsplit("/", 1)[-1]
    in_asyncio = "/asyncio/" in code.co_filename
    if in_asyncio and code.co_name == "to_thread":
        return "thread"
    # An event, lock or queue, or asyncio.wait on other tasks: parked, unless a library
    # waits there for its own I/O (an HTTP client reading its socket).
    if (in_asyncio and (file in PARKED_IN_ASYNCIO or code.co_name == "_wait")
            and not any("site-packages" in c.co_filename for c in chain)):
        return "parked"
    return f"{code.co_name} ({file})"


def _chain(coro: object) -> list[CodeType]:
    """The codes of the coroutines a task awaits through, outermost first."""
    codes = []
    while coro is not None:
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        if code is None:
            break  # a future: the end of the chain
        if code.co_name != "__await__":  # a pure-Python future's
            codes.append(code)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return codes


def _stage_threads() -> tuple[list[str], int, int]:
    """Stage threads at work; how many run a task's work item while waiting for the clock
    or another thread; how many pool threads are idle."""
    names = {t.ident: t.name for t in threading.enumerate()}
    running, parked, idle = [], 0, 0
    for ident, frame in sys._current_frames().items():
        name = names.get(ident, "")
        if not name.startswith(STAGE_THREADS):
            continue
        codes = _stack(frame)
        if codes[0].co_name == "_worker" and "thread.py" in codes[0].co_filename:
            idle += 1
        elif any(code in _PARKED_CODES or _waits_for_future(code) for code in codes):
            parked += not name.startswith("ship-ahead")
        else:
            running.append(name)
    return running, parked, idle


def _stack(frame: FrameType | None) -> list[CodeType]:
    """The codes of a thread's stack, innermost first."""
    codes = []
    while frame is not None:
        codes.append(frame.f_code)
        frame = frame.f_back
    return codes


def _waits_for_future(code: CodeType) -> bool:
    return code.co_name == "result" and code.co_filename.endswith("concurrent/futures/_base.py")
