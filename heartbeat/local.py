"""A heartbeat source for a local fleet of real processes: it reads each host's counters.

Each host's app answers `GET <url>/metrics` with
`{"release": "<name>", "counters": {"messages_created": <int>}}` (optionally a `"worker"` id
when several workers share a port, so that each worker's counter is followed on its own).
Counters only ever go up within one worker process, so a sampler thread (started on first
use) reads them every `sample_every` pipeline seconds and `fetch` turns the increases into a
rate per minute per window. A counter that goes down is a restarted worker: its new value
is the increase, as Prometheus' rate() reads a reset. A window is reported only when some
host was sampled before and after it; no samples at all is no data, never healthy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Annotated, Literal

from pydantic import Field

from heartbeat.series import brief, failure
from shiptypes import Point, ProviderConfig, ProviderContext, Seconds, Series


class LocalSourceConfig(ProviderConfig):
    type: Literal["local"]
    urls: list[Annotated[str, Field(pattern=r"^https?://")]] = Field(
        min_length=1, description="base URL of each host's app")
    sample_every: Seconds = Field(5.0, gt=0, description="pipeline seconds between samples")
    timeout: Seconds = Field(2.0, gt=0, le=30, description="deadline of one host's answer")
    keep: Seconds = Field(7200.0, gt=0, description="how long samples are kept")


@dataclass(frozen=True)
class Sample:
    at: datetime
    counters: Mapping[str, float]


class LocalSource:
    def __init__(self, config: LocalSourceConfig, context: ProviderContext) -> None:
        self.config = config
        self._clock = context.clock
        self._samples: dict[str, list[Sample]] = {}  # by host URL (and worker)
        self._errors: dict[str, str] = {}  # the last failure of each host URL
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=min(16, len(config.urls)),
                                        thread_name_prefix="heartbeat-sample")

    # --- sampling ---------------------------------------------------------------------

    def start(self) -> None:
        """Start sampling (idempotent). Start early: a trailing baseline needs the samples
        from before the release."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="heartbeat-local",
                                            daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.timeout + 1)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def sample(self) -> None:
        """One round: read every host's counters once."""
        for url, answer in zip(self.config.urls, self._pool.map(self._read, self.config.urls),
                               strict=True):
            self._record(url, answer)

    def _run(self) -> None:
        pause = self.config.sample_every / getattr(self._clock, "speed", 1.0)
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.sample()
            except RuntimeError:  # the pool is shut down: the source is stopping
                return
            self._stop.wait(max(0.0, pause - (time.monotonic() - began)))

    def _read(self, url: str) -> tuple[str, Sample] | str:
        """(key, sample) from one host, or why there is none."""
        import requests

        try:
            answer = requests.get(url.rstrip("/") + "/metrics", timeout=self.config.timeout)
            answer.raise_for_status()
            body = answer.json()
        except (requests.RequestException, ValueError) as error:
            return failure(error)
        counters = body.get("counters") if isinstance(body, dict) else None
        if not isinstance(counters, dict):
            return "the answer has no counters"
        numbers = {name: float(v) for name, v in counters.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}
        worker = body.get("worker")
        key = url if worker is None else f"{url}#{worker}"
        return key, Sample(self._clock.now(), numbers)

    def _record(self, url: str, answer: tuple[str, Sample] | str) -> None:
        with self._lock:
            if isinstance(answer, str):
                self._errors[url] = answer
                return
            self._errors.pop(url, None)
            key, sample = answer
            kept = self._samples.setdefault(key, [])
            kept.append(sample)
            horizon = sample.at - timedelta(seconds=self.config.keep)
            while len(kept) > 2 and kept[0].at < horizon:
                kept.pop(0)
            for gone in [k for k, v in self._samples.items() if v[-1].at < horizon]:
                del self._samples[gone]  # a worker that exited long ago

    # --- the MetricSource protocol --------------------------------------------------------

    def fetch(self, query: str, start: datetime, end: datetime, step_s: float) -> Series:
        self.start()
        with self._lock:
            histories = [[(s.at, s.counters[query]) for s in kept if query in s.counters]
                         for kept in self._samples.values()]
            errors = dict(self._errors)
        count = int((end - start).total_seconds() // step_s)
        increases = [0.0] * count
        covered = [False] * count
        for history in histories:
            _add_increases(history, start, step_s, increases, covered)
        per_minute = 60.0 / step_s
        points = tuple(Point(start + timedelta(seconds=step_s * (k + 1)), increases[k] * per_minute)
                       for k in range(count) if covered[k])
        if points:
            return Series(points)
        why = "; ".join(f"{url}: {reason}" for url, reason in errors.items())
        return Series(error=f"local: no samples of {query!r} cover the windows"
                            + (f" ({brief(why)})" if why else ""))


def _add_increases(history: list[tuple[datetime, float]], start: datetime, step_s: float,
                   increases: list[float], covered: list[bool]) -> None:
    """Spread the counter's increase between each two samples over the windows they span;
    mark the windows this history covers from end to end."""
    if len(history) < 2:
        return
    marks = [((at - start).total_seconds(), value) for at, value in history]
    first, last = marks[0][0], marks[-1][0]
    for k in range(len(covered)):
        covered[k] = covered[k] or (first <= k * step_s and (k + 1) * step_s <= last)
    for (a, before), (b, after) in pairwise(marks):
        rise = after - before if after >= before else after  # a reset starts again from 0
        if rise <= 0:
            continue
        if b <= a:  # two answers stamped alike: the rise belongs to that moment
            if 0 <= b < len(increases) * step_s:
                increases[int(b // step_s)] += rise
            continue
        for k in range(max(0, int(a // step_s)), min(len(increases), int(b // step_s) + 1)):
            overlap = min(b, (k + 1) * step_s) - max(a, k * step_s)
            if overlap > 0:
                increases[k] += rise * overlap / (b - a)
