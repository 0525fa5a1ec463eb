"""Delivery off the release's path: notifiers that talk to a vendor over the network hand
their sends to an Outbox, which sends them in order on one background thread, retrying
429 and 5xx answers with bounded backoff. A release never waits for a chat service; a
send that cannot be delivered within its budget is recorded in the event log.
"""

from __future__ import annotations

import atexit
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol

from orchestrator.notify import Notice, Notifier
from shiptypes import utcnow


class Retry(Exception):
    """A send that may work later (rate limited, vendor error, network trouble)."""

    def __init__(self, why: str, after: float = 0.0) -> None:
        super().__init__(why)
        self.after = after


class DeliveryPolicy(Protocol):
    attempts: int
    backoff: float
    max_wait: float
    give_up_after: float


@dataclass(frozen=True)
class Once:
    """For notifiers that retry on their own: one try, no waiting."""

    attempts: int = 1
    backoff: float = 1.0
    max_wait: float = 1.0
    give_up_after: float = 600.0


class EventLog(Protocol):
    def event(self, pipeline: str, kind: str, message: str, actor: str = "ship",
              release_id: int | None = None, data: dict | None = None) -> None: ...


@dataclass(frozen=True)
class _Send:
    pipeline: str
    release_id: int | None
    what: str
    send: Callable[[], None]


class Outbox:
    def __init__(self, name: str, events: EventLog, policy: DeliveryPolicy,
                 wait: Callable[[float], None] | None = None) -> None:
        self.name = name
        self.events = events
        self.policy = policy
        self.delivered = 0
        self.failed = 0
        self._queue: queue.Queue[_Send | threading.Event | None] = queue.Queue()
        self._closing = threading.Event()
        self._wait = wait if wait is not None else self._closing.wait
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def put(self, pipeline: str, release_id: int | None, what: str,
            send: Callable[[], None]) -> None:
        self._start()
        self._queue.put(_Send(pipeline, release_id, what, send))

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far was sent or given up. False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            return self._queue.empty()
        marker = threading.Event()
        self._queue.put(marker)
        return marker.wait(timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Try once more what is queued (within `timeout`), with no more waiting between
        tries, then stop."""
        self._closing.set()
        flushed = self.flush(timeout)
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(min(timeout, 2.0))
        return flushed

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"ship-{self.name}",
                                                daemon=True)
                self._thread.start()
                atexit.register(self.close, 5.0)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if isinstance(item, threading.Event):
                item.set()
            else:
                self._deliver(item)

    def _deliver(self, item: _Send) -> None:
        policy = self.policy
        deadline = time.monotonic() + policy.give_up_after
        why = ""
        for attempt in range(1, policy.attempts + 1):
            try:
                item.send()
                self.delivered += 1
                return
            except Retry as retry:
                why = str(retry)
                # The vendor's Retry-After is obeyed as given (retrying sooner only earns
                # another 429); when it does not fit the budget, give up now.
                pause = retry.after or min(policy.backoff * 2 ** (attempt - 1), policy.max_wait)
            except Exception as error:
                self._give_up(item, f"{type(error).__name__}: {error}")
                return
            if (attempt == policy.attempts or self._closing.is_set()
                    or time.monotonic() + pause > deadline):
                break
            self._wait(pause)
        self._give_up(item, f"gave up after {attempt} attempt(s): {why}")

    def _give_up(self, item: _Send, why: str) -> None:
        self.failed += 1
        # If the store itself is down there is nothing more to do from here.
        with contextlib.suppress(Exception):
            self.events.event(item.pipeline, "notify_failed",
                              f"{self.name} could not send {item.what}: {why}",
                              release_id=item.release_id, data={"notifier": self.name})


class Queued:
    """Runs a blocking notifier (one that retries by itself, such as PagerDuty) through an
    outbox, so its retries never hold up a release."""

    def __init__(self, notifier: Notifier, outbox: Outbox) -> None:
        self.notifier = notifier
        self.name = notifier.name
        self.outbox = outbox

    def notify(self, notice: Notice) -> None:
        self.outbox.put(notice.pipeline, notice.release_id, notice.kind,
                        lambda: self.notifier.notify(notice))

    def close(self, timeout: float = 10.0) -> bool:
        return self.outbox.close(timeout)


def retry_after(value: str | None) -> float:
    """Retry-After in seconds, from a number or an HTTP date; 0 when absent or unreadable."""
    value = (value or "").strip()
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - utcnow()).total_seconds())
    except (TypeError, ValueError):
        return 0.0
