"""The local source against real HTTP apps on 127.0.0.1 that expose counters."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from heartbeat.local import LocalSource, LocalSourceConfig
from shiptypes import ProviderContext, WallClock
from tests.fakehttp import FakeServer, Reply, Request

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
COUNTER = "messages_created"


class ManualClock:
    """Pipeline time that moves only when the test says so: the source only reads `now`."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def sleep(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


class App:
    """A host's app: answers GET /metrics with its release and counters."""

    def __init__(self) -> None:
        self.count = 0
        self.server = FakeServer()
        self.server.route("GET", "/metrics", self.answer)

    def answer(self, _request: Request) -> Reply:
        return Reply(json={"release": "us#7", "counters": {COUNTER: self.count}})

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture
def apps() -> Iterator[list[App]]:
    hosts = [App(), App()]
    for app in hosts:
        app.server.__enter__()
    yield hosts
    for app in hosts:
        app.server.__exit__()


@pytest.fixture
def closed_url() -> str:
    with FakeServer() as gone:
        return gone.url


def local_source(urls: list[str], clock: object, sample_every: float = 3600.0) -> LocalSource:
    config = LocalSourceConfig(type="local", urls=urls, sample_every=sample_every, timeout=1)
    return LocalSource(config, ProviderContext(pipeline="us", region="local", clock=clock))  # type: ignore[arg-type]


@pytest.fixture
def make() -> Iterator:
    """Sources on a manual clock; the sampler thread (which starts on the first fetch) waits
    an hour between rounds, so the test's own `sample()` calls set the pace."""
    made: list[LocalSource] = []

    def build(urls: list[str]) -> tuple[LocalSource, ManualClock]:
        clock = ManualClock(T0)
        made.append(local_source(urls, clock))
        return made[-1], clock

    yield build
    for source in made:
        source.stop()


def run(source: LocalSource, clock: ManualClock, apps: list[App], steps: list[list[int]],
        every: float) -> None:
    """At each step set every app's counter, sample, and let `every` seconds pass."""
    for counts in steps:
        for app, count in zip(apps, counts, strict=True):
            app.count = count
        source.sample()
        clock.sleep(every)
    clock.sleep(-every)


def test_counters_become_a_rate_per_minute_per_window(apps: list[App], make) -> None:
    source, clock = make([a.url for a in apps])
    # host 0 counts 100/min, host 1 200/min, sampled every 15 s for 3 minutes
    run(source, clock, apps, [[25 * k, 1000 + 50 * k] for k in range(13)], every=15)
    series = source.fetch(COUNTER, T0, T0 + timedelta(minutes=3), 60)
    assert [(p.at, round(p.value, 6)) for p in series.points] == [
        (T0 + timedelta(minutes=m), 300.0) for m in (1, 2, 3)]


def test_a_counter_reset_is_a_restart_never_a_negative_rate(apps: list[App], make) -> None:
    source, clock = make([apps[0].url])
    run(source, clock, apps[:1], [[v] for v in (1000, 1100, 1200, 30, 130, 230)], every=60)
    series = source.fetch(COUNTER, T0, T0 + timedelta(minutes=5), 60)
    assert [p.value for p in series.points] == [100, 100, 30, 100, 100]


def test_a_window_still_filling_is_left_out(apps: list[App], make) -> None:
    source, clock = make([apps[0].url])
    run(source, clock, apps[:1], [[10 * k] for k in range(6)], every=30)  # 0 s .. 150 s
    series = source.fetch(COUNTER, T0, T0 + timedelta(minutes=3), 60)
    assert [p.at for p in series.points] == [T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)]
    assert [p.value for p in series.points] == [20, 20]


def test_an_unreachable_host_adds_nothing(apps: list[App], closed_url: str, make) -> None:
    source, clock = make([apps[0].url, closed_url])
    run(source, clock, apps[:1], [[60 * k] for k in range(4)], every=60)
    series = source.fetch(COUNTER, T0, T0 + timedelta(minutes=3), 60)
    assert [p.value for p in series.points] == [60, 60, 60]


def test_only_unreachable_hosts_is_no_data(closed_url: str, make) -> None:
    source, clock = make([closed_url])
    for _ in range(3):
        source.sample()
        clock.sleep(60)
    series = source.fetch(COUNTER, T0, T0 + timedelta(minutes=2), 60)
    assert series.no_data
    assert closed_url in (series.error or "") and "Connection refused" in (series.error or "")


def test_no_samples_yet_is_no_data(apps: list[App], make) -> None:
    source, _clock = make([apps[0].url])
    series = source.fetch(COUNTER, T0 - timedelta(minutes=2), T0, 60)
    assert series.no_data


def test_an_answer_without_counters_is_no_data(make) -> None:
    with FakeServer() as broken:
        broken.route("GET", "/metrics", [Reply(json={"release": "us#7"}),
                                         Reply(status=500, body="oops")])
        source, clock = make([broken.url])
        for _ in range(3):
            source.sample()
            clock.sleep(60)
        series = source.fetch(COUNTER, T0, T0 + timedelta(minutes=2), 60)
    assert series.no_data
    assert "500" in (series.error or "")


def test_workers_sharing_a_port_are_followed_one_by_one(make) -> None:
    """Two workers behind one port answer in turn, each with its own counter: switching
    between them is not a reset."""
    turns = itertools.cycle([1, 2])
    counts = {1: 0, 2: 5000}

    def answer(_request: Request) -> Reply:
        worker = next(turns)
        counts[worker] += 50
        return Reply(json={"release": "us#7", "worker": worker,
                           "counters": {COUNTER: counts[worker]}})

    with FakeServer() as host:
        host.route("GET", "/metrics", answer)
        source, clock = make([host.url])
        for _ in range(9):
            source.sample()
            clock.sleep(30)
        series = source.fetch(COUNTER, T0, T0 + timedelta(minutes=3), 60)
    # each worker counts 50 per 60 s between its own answers: 100 per minute together, but
    # worker 2 is first heard at 30 s, so the first window holds only half of its share
    assert [round(p.value, 6) for p in series.points] == [75.0, 100.0, 100.0]


def test_the_sampler_starts_on_first_use_in_a_daemon_thread(apps: list[App]) -> None:
    apps[0].count = 0
    ticks = threading.Event()

    def counting(_request: Request) -> Reply:
        apps[0].count += 7
        ticks.set()
        return Reply(json={"release": "us#7", "counters": {COUNTER: apps[0].count}})

    apps[0].server.route("GET", "/metrics", counting)
    source = local_source([apps[0].url], WallClock(), sample_every=0.02)
    try:
        assert not ticks.is_set()
        first = source.fetch(COUNTER, T0, T0 + timedelta(seconds=1), 1)
        assert first.no_data
        assert ticks.wait(10)
        series = first
        for _ in range(500):  # bounded: until the samples span a whole 0.2 s window
            now = datetime.now(UTC)
            series = source.fetch(COUNTER, now - timedelta(seconds=2), now, 0.2)
            if not series.no_data:
                break
            ticks.clear()
            ticks.wait(1)
        assert series.points and all(p.value >= 0 for p in series.points)
        assert next(t for t in threading.enumerate() if t.name == "heartbeat-local").daemon
    finally:
        source.stop()
