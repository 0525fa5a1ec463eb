"""The web UI served for real: a FastAPI app with the UI mounted, run by uvicorn on
127.0.0.1 in a thread with its own event loop (the loop rollbacks run their flows on), over
a Ship of simulated pipelines whose releases went through the real Prefect engine."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import requests
import uvicorn
from fastapi import FastAPI

from orchestrator import config
from orchestrator.release import State
from orchestrator.runner import DeployOutcome, Runner
from orchestrator.runtime import Ship, use
from orchestrator.store import Release, Store
from orchestrator.web import mount_ui
from shiptypes import Clock, Commit, ScaledClock
from tests.conftest import SIM_PIPELINES

TOKEN = "operator-token-for-tests-5f1c2a"
SECRET = "cookie-signing-key-for-tests"
ENV = {"SHIP_UI_TOKEN": TOKEN, "SHIP_UI_SECRET": SECRET}
SPEED = 60.0  # a real second is a pipeline minute


def sim_config(ui: dict[str, Any], health_url: str | None = None,
               breaches: dict[str, list[int]] | None = None) -> config.ShipConfig:
    """The suite's simulated us and eu pipelines with a `ui:` section. With `health_url`,
    the us pipeline's first gate is the real boot gate polling that pre-prod URL (its
    result carries a link); `breaches` names releases that break a pipeline's heartbeat."""
    loaded = config.parse(SIM_PIPELINES)
    pipelines = {name: p.model_dump(exclude={"name"}) for name, p in loaded.pipelines.items()}
    if health_url:
        pipelines["us"]["preprod"]["url"] = health_url
        pipelines["us"]["gates"][0] = {"type": "boot", "name": "boot", "timeout": 30,
                                       "interval": 1}
    for name, numbers in (breaches or {}).items():
        pipelines[name]["heartbeat"]["source"]["breach_releases"] = numbers
        # A longer watch, so that a watch flow starting late on a busy machine still looks.
        pipelines[name]["heartbeat"]["watch"] = 300
    return config.ShipConfig.model_validate({"pipelines": pipelines, "ui": ui})


def make_ship(tmp_path: Path, loaded: config.ShipConfig, clock: Clock | None = None,
              env: dict[str, str] | None = None, current: bool = True) -> Ship:
    clock = clock or ScaledClock(SPEED)
    store = Store(f"sqlite:///{tmp_path}/ship.db", clock)
    ship = Ship(loaded, store, clock, notifiers=[], env=ENV if env is None else env,
                state_dir=tmp_path / "state")
    return use(ship) if current else ship


def ship_releases(runner: Runner, pipeline: str, count: int, author: str = "ann",
                  ) -> list[DeployOutcome]:
    """Ship `count` releases one after another through the real flows, each watched."""
    async def go() -> list[DeployOutcome]:
        outcomes = []
        for _ in range(count):
            n = len(runner.ship.store.releases(pipeline, limit=1000)) + 1
            commit = Commit(f"{pipeline}{n}".encode().hex().ljust(40, "0"), author,
                            f"change {n} on {pipeline}", runner.ship.clock.now())
            outcomes.append(await runner.deploy(pipeline, [commit], author))
            await runner.settle(pipeline)
        return outcomes

    return asyncio.run(go())


@dataclass
class Served:
    url: str
    ship: Ship
    runner: Runner
    loop: asyncio.AbstractEventLoop

    @property
    def store(self) -> Store:
        return self.ship.store

    def run(self, work: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        """Run a coroutine on the server's event loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def session(self) -> requests.Session:
        """A client that has loaded a page, so it holds a CSRF cookie."""
        client = requests.Session()
        client.get(self.url + "/", timeout=10).raise_for_status()
        return client


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(ship: Ship, runner: Runner | None = None) -> Iterator[Served]:
    runner = runner or Runner(ship)
    app = FastAPI()
    mount_ui(app, ship, runner)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),),
                              name="ship-web", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the web UI did not start")
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", ship, runner, loop)
    finally:
        server.should_exit = True
        thread.join(10)
        loop.close()


# --- a hand-written history, for figures checked by hand --------------------------------------


class SetClock:
    """Pipeline time that moves only when a test sets it."""

    speed = 1.0

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def sleep(self, seconds: float) -> None:
        pass

    async def wait(self, seconds: float) -> None:
        pass


MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def write_history(store: Store, clock: SetClock, now: datetime) -> dict[str, Release]:
    """Seven releases of `us`, through the store's own state changes, at times set by hand
    (all before `now`):

    r0  merged −40d−30m, live −40d, watched clean            (older than 30 days)
    r1  merged −20d−60m and −20d−30m, live −20d, clean
    r2  merged −10d−45m, live −10d; breach −10d+10m, auto-rollback to r1 started +11m,
        done +16m (restored in 6 min)
    r3  merged −5d−20m, live −5d (exactly 5 days back), clean
    r4  merged −3h−90m and −3h−15m, live −3h, clean; rolled back by hand to r3 at −2h,
        done −2h+4m (restored in 4 min)
    r5  merged −1h−10m, live −1h, being watched
    r6  merged −30m, halted by a gate −20m                   (never shipped)
    """
    made = {
        "r0": _ship(store, clock, now - 40 * DAY, [30 * MIN], "done"),
        "r1": _ship(store, clock, now - 20 * DAY, [60 * MIN, 30 * MIN], "done"),
        "r2": _ship(store, clock, now - 10 * DAY, [45 * MIN], "watching"),
    }
    _roll_back(store, clock, made["r2"], made["r1"], "heartbeat",
               breach_at=now - 10 * DAY + 10 * MIN, started=now - 10 * DAY + 11 * MIN,
               finished=now - 10 * DAY + 16 * MIN)
    made["r3"] = _ship(store, clock, now - 5 * DAY, [20 * MIN], "done")
    made["r4"] = _ship(store, clock, now - 3 * HOUR, [90 * MIN, 15 * MIN], "done")
    _roll_back(store, clock, made["r4"], made["r3"], "carol", breach_at=None,
               started=now - 2 * HOUR, finished=now - 2 * HOUR + 4 * MIN)
    made["r5"] = _ship(store, clock, now - HOUR, [10 * MIN], "watching")
    clock.at = now - 30 * MIN
    store.record_merge("us", Commit("f" * 40, "dave", "r6", now - 30 * MIN))
    release = store.start_release("us", 50, "dave").release
    for state in (State.BUILDING, State.PREPROD, State.GATING):
        store.move(release.id, state)
    clock.at = now - 20 * MIN
    store.move(release.id, State.HALTED, reason="smoke: failed", halted_by="gate")
    made["r6"] = store.release(release.id)
    clock.at = now
    return {name: store.release(r.id) for name, r in made.items()}


def _ship(store: Store, clock: SetClock, live_at: datetime, lead: list[timedelta],
          end: str) -> Release:
    """A release of commits merged `lead` before it went live at `live_at`."""
    for gap in lead:
        merged = live_at - gap
        clock.at = merged
        store.record_merge("us", Commit(f"{int(merged.timestamp()):040x}", "ann", "", merged))
    clock.at = live_at - 8 * MIN
    release = store.start_release("us", 50, "ann").release
    for state in (State.BUILDING, State.PREPROD, State.GATING):
        store.move(release.id, state)
    assert store.begin_promotion(release.id).won
    clock.at = live_at
    store.go_live(release.id)
    clock.at = live_at + MIN
    store.move(release.id, State.WATCHING)
    if end == "done":
        clock.at = live_at + 20 * MIN
        store.move(release.id, State.DONE)
    return store.release(release.id)


def _roll_back(store: Store, clock: SetClock, bad: Release, good: Release, actor: str,
               breach_at: datetime | None, started: datetime, finished: datetime) -> None:
    clock.at = started
    claim = store.begin_rollback("us", bad.id, good.id, actor, "trouble",
                                 auto=breach_at is not None, breach_at=breach_at)
    assert claim.won
    clock.at = finished
    store.finish_rollback(claim.rollback.id, ok=True, actor=actor)
