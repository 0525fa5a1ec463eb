"""End to end on the local fleet: real slugs, real host agents and workers, a heartbeat read
from the app's own counter, the real Prefect engine. A release whose app stops counting
messages is rolled back automatically, the pipeline locks, the next deploy is refused until
unlocked, and every host serves what the store says is live."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import config
from orchestrator.release import State
from orchestrator.runner import Runner
from orchestrator.runtime import Ship, use
from orchestrator.store import Store
from shiptypes import Commit, ScaledClock
from tests.conftest import ROOT

SPEED = 10.0
HOSTS = 2

PIPELINES = """
version: 1
pipelines:
  local:
    region: local
    repo: {{name: example/chat}}
    build: {{type: tarball, source: "{app}", store: "{slugs}",
             release_json_by_number: {{2: {{count_messages: false}}}}}}
    gates: [{{type: sim, name: smoke}}]
    preprod: {{fleet: {{driver: local, hosts: 1, workers: 1}}}}
    fleet: {{driver: local, hosts: {hosts}, workers: 2, base_port: {port}}}
    rollout: {{stagger: 5s, drain_timeout: 2s}}
    heartbeat:
      source: {{type: local, urls: [{urls}], sample_every: 2s}}
      window: 10s
      watch: 60s
      metrics:
        - {{name: messages_created, query: messages_created,
           baseline: {{kind: trailing, window: 40s}}, min_ratio: 0.5, windows: 2}}
    rollback: {{auto: true, lookback_minutes: 0.5}}
    notify: {{console: false}}
"""


def _free_base_port(count: int) -> int:
    for _ in range(50):
        base = random.randint(20000, 40000)
        try:
            for port in range(base, base + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


class Traffic:
    """Keeps creating messages on every host, as users would."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopped.wait(0.02):
            for url in self.urls:
                # Refused while nothing is deployed yet: users keep trying.
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(urllib.request.Request(f"{url}/messages",
                                                                  method="POST"), timeout=1)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopped.set()
        self.thread.join()


def serving(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as answer:
        return answer.headers["X-Release"]


@pytest.fixture
def local_world(tmp_path: Path, prefect_api: str) -> Iterator[tuple[Runner, Store, list[str]]]:
    port = _free_base_port(HOSTS)
    urls = [f"http://127.0.0.1:{port + i}" for i in range(HOSTS)]
    loaded = config.parse(PIPELINES.format(
        app=ROOT / "examples" / "app", slugs=tmp_path / "slugs", hosts=HOSTS, port=port,
        urls=", ".join(f'"{u}"' for u in urls)))
    clock = ScaledClock(SPEED)
    store = Store(f"sqlite:///{tmp_path}/ship.db", clock)
    ship = use(Ship(loaded, store, clock, notifiers=[], state_dir=tmp_path / "state"))
    try:
        yield Runner(ship), store, urls
    finally:
        ship.close_providers(stop_hosts=True)


def test_a_release_that_stops_counting_is_rolled_back_on_real_hosts(local_world) -> None:
    runner, store, urls = local_world

    async def deploy(n: int, author: str):
        commit = Commit(f"{n:040x}", author, f"change {n}", runner.ship.clock.now())
        outcome = await runner.deploy("local", [commit], author)
        await runner.settle("local")
        return outcome

    with Traffic(urls):
        first = asyncio.run(deploy(1, "alice"))
        # The first release has no history to compare with: it is watched blind, which
        # holds promotions until a person lets them go on.
        assert store.release(first.release.id).state == State.DONE
        assert "no data" in (store.pipeline_state("local").hold_reason or "")
        assert store.override_hold("local", "alice", "first release: no history yet")
        assert {serving(u) for u in urls} == {"local#1"}

        second = asyncio.run(deploy(2, "bob"))
        assert store.release(second.release.id).state == State.ROLLED_BACK
        state = store.pipeline_state("local")
        assert state.live.number == 1
        assert state.lock.auto and state.lock.reason.startswith("auto-rollback: messages_created")
        assert {serving(u) for u in urls} == {"local#1"}  # the hosts agree with the store

        refused = asyncio.run(deploy(3, "carol"))
        assert not refused.started and refused.lock is not None
        store.unlock("local", "bob", "counting fixed")
        third = asyncio.run(runner.ship_next("local", "bob"))
        assert third.release.number == 3 and third.state == State.DONE
        assert {serving(u) for u in urls} == {"local#3"}
