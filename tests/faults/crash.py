"""The crash-test world: a real local fleet (2 hosts × 2 workers of examples/app) whose
agents outlive the `ship` processes that drive it, as real hosts outlive their
orchestrator; a SQLite store; and `ship` processes started, SIGKILLed at a chosen moment,
and started again. Used by tests/faults/test_kill.py and bench/faults.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from orchestrator.reconcile import audit
from orchestrator.release import State
from orchestrator.store import Release, Store
from orchestrator.tarball import TarballBuildConfig, TarballBuilder
from rollout.local import LocalFleet, LocalFleetConfig
from shiptypes import Commit, FleetStatus, ProviderContext, RolloutSettings, ScaledClock
from tests.rollout.loadgen import Load
from tests.rollout.test_local_fleet import mid_restart

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "app"
SPEED = 20.0  # a real second is 20 pipeline seconds


def sha(n: int) -> str:
    return f"{n:040x}"


@dataclass
class Settings:
    """The pipeline of a crash test, in pipeline seconds: long enough where a kill must land."""

    stagger: float = 2.0
    gate: float = 0.0
    preprod_fetch: float = 0.0
    watch: float = 40.0
    release_json_by_number: dict[int, dict[str, Any]] = field(default_factory=dict)


class CrashWorld:
    def __init__(self, workdir: Path, prefect_api: str, settings: Settings) -> None:
        self.dir = workdir
        self.settings = settings
        self.db_url = f"sqlite:///{workdir}/ship.db"
        self.clock = ScaledClock(SPEED)
        self.store = Store(self.db_url, self.clock)
        self.context = ProviderContext("us", "local", clock=self.clock,
                                       state_dir=workdir / "test-state")
        self.hosts_root = workdir / "hosts"
        # The agents are this process's children: they live on while ship processes die.
        self.fleet = LocalFleet(
            LocalFleetConfig(driver="local", hosts=2, workers=2, root=str(self.hosts_root),
                             boot_timeout=10, idle_grace=0.2),
            RolloutSettings(stagger=0, drain_timeout=2), self.context)  # seeds go at once
        self.config_path = workdir / "pipelines.yaml"
        self.config_path.write_text(yaml.safe_dump(self._config()))
        self.env = {**os.environ, "PREFECT_API_URL": prefect_api, "SHIP_USER": "tester",
                    "SHIP_DATABASE_URL": self.db_url, "PYTHONPATH": str(ROOT),
                    "COLUMNS": "200"}
        self.logs: list[Path] = []

    def _config(self) -> dict[str, Any]:
        s = self.settings
        return {"version": 1, "pipelines": {"us": {
            "region": "local", "repo": {"name": "example/chat"},
            "build": {"type": "tarball", "source": str(APP), "store": str(self.dir / "slugs"),
                      "release_json_by_number": s.release_json_by_number},
            "preprod": {"fleet": {"driver": "sim", "hosts": 1, "workers": 1, "worker_boot": 0,
                                  "drain": 0, "fetch": s.preprod_fetch, "jitter": 0}},
            "gates": [{"type": "sim", "name": "smoke", "duration": s.gate}],
            "fleet": {"driver": "local", "agents": "attach", "root": str(self.hosts_root),
                      "hosts": 2, "workers": 2},
            "rollout": {"stagger": s.stagger, "drain_timeout": 2},
            "heartbeat": {"source": {"type": "local", "urls": self.fleet.host_urls,
                                     "sample_every": 2, "timeout": 1},
                          "window": 10, "watch": s.watch,
                          "metrics": [{"name": "messages_created", "query": "messages_created",
                                       "baseline": {"kind": "trailing", "window": 60}}]},
            "rollback": {"auto": True, "lookback_minutes": 1},
            "notify": {"console": False}}}}

    def close(self) -> None:
        self.fleet.close()
        self.store.close()

    # --- releases that shipped cleanly before the test --------------------------------

    def seed(self, n: int) -> Release:
        """Release n, shipped to every host and watched clean, as an earlier run left it."""
        store = self.store
        store.record_merge("us", Commit(sha(n), "ann", f"change {n}", store.now()))
        release = store.start_release("us", 50, "seed").release
        for state in (State.BUILDING, State.PREPROD, State.GATING):
            store.move(release.id, state, actor="seed")
        assert store.begin_promotion(release.id, actor="seed").won
        config = TarballBuildConfig(type="tarball", source=str(APP), store=str(self.dir / "slugs"))
        store.set_slug(release.id, TarballBuilder(config, self.context).build(release.ref()))
        self.fleet.publish(store.release(release.id).ref())
        status = wait_for(lambda: (s := self.fleet.observe()).done and s, f"#{n} on the fleet")
        assert status.converged == status.hosts, status
        store.go_live(release.id, actor="seed")
        return store.move(release.id, State.DONE, actor="seed")

    # --- ship processes ------------------------------------------------------------------

    def start(self, *args: str, slow_build: float | None = None) -> subprocess.Popen[bytes]:
        """A `ship` process (the real CLI) with these arguments, running on its own."""
        log = self.dir / f"ship-{len(self.logs)}-{args[0]}.log"
        self.logs.append(log)
        env = {**self.env, **({"SHIP_TEST_SLOW_BUILD": str(slow_build)} if slow_build else {})}
        with log.open("wb") as output:
            return subprocess.Popen(
                [sys.executable, "-m", "tests.faults.driver", "--config", str(self.config_path),
                 "--speed", str(SPEED), *args], cwd=self.dir, env=env, stdout=output,
                stderr=subprocess.STDOUT)

    def run(self, *args: str, timeout: float = 120) -> tuple[int, str]:
        """A `ship` process run to its end: (exit code, output)."""
        process = self.start(*args)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(f"ship {' '.join(args)} did not end:\n{self.log()}") from None
        return code, self.log()

    def reconcile(self) -> dict[str, Any]:
        code, output = self.run("reconcile", "--json")
        start = output.find('{\n  "reconciled"')
        assert start >= 0, output
        answer, _ = json.JSONDecoder().raw_decode(output[start:])
        answer["exit_code"] = code
        return answer

    def kill_when(self, process: subprocess.Popen[bytes], moment: Callable[[], bool],
                  what: str, timeout: float = 120) -> list[dict[str, Any]]:
        """SIGKILL the process at the moment; returns the hosts' statuses at the kill."""
        def reached() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"ship exited {process.returncode} before {what}:\n"
                                     f"{self.log()}")
            return moment()

        wait_for(reached, what, timeout, every=0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        return self.fleet.statuses()

    def log(self) -> str:
        return self.logs[-1].read_text(errors="replace") if self.logs else ""

    # --- what is true now ------------------------------------------------------------------

    def in_flight(self, state: State) -> bool:
        release = self.store.pipeline_state("us").in_flight
        return release is not None and release.state == state

    def hosts_on(self, number: int, phases: tuple[str, ...] = ("restarting", "converged")) -> int:
        """How many hosts have started (or finished) their restart onto release `number`."""
        return sum(s.get("desired") == number and s.get("phase") in phases
                   for s in self.fleet.statuses())

    def observe(self) -> FleetStatus:
        """The fleet as a new ship process sees it (what was last published, on disk)."""
        config = LocalFleetConfig(driver="local", agents="attach", root=str(self.hosts_root),
                                  hosts=2, workers=2)
        return LocalFleet(config, RolloutSettings(), self.context).observe()

    def settled_hosts(self, timeout: float = 120) -> list[dict[str, Any]]:
        """Every host's status once none is mid-restart."""
        def idle() -> list[dict[str, Any]] | None:
            statuses = self.fleet.statuses()
            done = all(s.get("phase") in ("converged", "failed") and not s.get("draining")
                       and len(s.get("workers", [])) == 2 for s in statuses)
            return statuses if done else None

        return wait_for(idle, "every host to settle", timeout)

    def disagreements(self, live: int, lock_owner: str | None = None) -> list[str]:
        """What is not as it should be once things settle: every host on `live` (current,
        every worker, what they answer), the store saying so too, the lock as expected,
        and the audit (nothing shipped twice, nothing lost, the event log whole)."""
        problems = []
        hosts = self.settled_hosts()
        workers = [(w["release"], w["healthy"]) for h in hosts for w in h["workers"]]
        if [h["current_release"] for h in hosts] != [live] * len(hosts) or workers != [
                (live, True)] * len(workers):
            problems.append(f"hosts: current {[h['current_release'] for h in hosts]}, "
                            f"workers {workers}")
        if (serving := self.serving()) != {f"us#{live}"}:
            problems.append(f"the hosts answer as {sorted(map(str, serving))}")
        state = self.store.pipeline_state("us")
        if (state.live.number if state.live else None) != live:
            problems.append(f"the store says {state.live.name if state.live else 'nothing'} "
                            "is live")
        if state.in_flight is not None or state.rollback is not None:
            problems.append(f"left running: {state.in_flight or state.rollback}")
        if (state.lock.owner if state.lock else None) != lock_owner:
            problems.append(f"lock: {state.lock.describe() if state.lock else 'none'}")
        return problems + audit(self.store, "us", self.observe())

    def serving(self, requests_per_host: int = 6) -> set[str]:
        """The releases the hosts answer with (X-Release), asking each several times."""
        seen = set()
        for url in self.fleet.host_urls:
            for _ in range(requests_per_host):
                seen.add(requests.get(url, timeout=5).headers.get("X-Release"))
        return seen


# --- the scenarios: a ship process killed at one moment, then `ship reconcile` ----------

KILLS: dict[str, Settings] = {
    "building": Settings(),
    "preprod": Settings(preprod_fetch=2000),
    "gating": Settings(gate=2000),
    # A stagger must be shorter than the watch (pipelines.yaml refuses it otherwise).
    "rollout": Settings(stagger=80, watch=100),
    "rollout of a release that fails to boot": Settings(
        stagger=40, watch=60, release_json_by_number={2: {"crash_on_boot": True}}),
    "watching": Settings(watch=120),
    "rolling back": Settings(stagger=80, watch=100),
}


@dataclass
class Killed:
    """What a kill scenario saw: the hosts at the kill, and what reconcile answered."""

    at_kill: list[dict[str, Any]]
    answer: dict[str, Any]

    def decision(self, release: str = "us#2") -> dict[str, Any]:
        found = [d for d in self.answer["reconciled"] if d["release"] == release]
        return found[0] if len(found) == 1 else {"action": f"none ({self.answer})"}


def kill_and_reconcile(world: CrashWorld, stage: str) -> Killed:
    """Ship #2 (or roll #2 back to #1) on a fleet serving it, SIGKILL the ship process at
    `stage` (a key of KILLS), then run `ship reconcile` in a new process."""
    world.seed(1)
    if stage == "rolling back":
        world.seed(2)
        ship = world.start("rollback", "us", "--to", "1", "--reason", "bad copy")
    else:
        ship = world.start("deploy", "us", "--sha", sha(2),
                           slow_build=60 if stage == "building" else None)
    at_kill = world.kill_when(ship, _moments(world)[stage], f"us#2 {stage}")
    return Killed(at_kill, world.reconcile())


def _moments(world: CrashWorld) -> dict[str, Callable[[], bool]]:
    def watching() -> bool:
        release = world.store.release_by_number("us", 2)
        return release is not None and release.state == State.WATCHING

    started = ("restarting", "converged", "failed")
    return {
        "building": lambda: world.in_flight(State.BUILDING),
        "preprod": lambda: world.in_flight(State.PREPROD),
        "gating": lambda: world.in_flight(State.GATING),
        "rollout": lambda: world.in_flight(State.PROMOTING) and world.hosts_on(2) >= 1,
        "rollout of a release that fails to boot": lambda: world.in_flight(
            State.PROMOTING) and world.hosts_on(2, started) >= 1,
        "watching": watching,
        "rolling back": lambda: world.store.pipeline_state("us").rollback is not None
        and world.hosts_on(1) >= 1,
    }


HOST_KILL = Settings(stagger=0, release_json_by_number={2: {"boot_delay": 0.4}})


@dataclass
class HostKilled:
    exit_code: int
    load: Load
    started_before: str | None
    started_after: str | None


def kill_a_host_agent(world: CrashWorld) -> HostKilled:
    """Ship #2 under load; SIGKILL host-0's agent mid-restart and start it again."""
    world.seed(1)
    with Load(world.fleet.host_urls, clients=4, rate=20.0) as load:
        ship = world.start("deploy", "us", "--sha", sha(2))
        wait_for(lambda: mid_restart(world.fleet.statuses()[0]), "host-0 mid-restart", 60,
                 every=0.01)
        started_before = world.fleet.statuses()[0]["started_at"]
        world.fleet.kill_host(0)
        time.sleep(0.5)  # its workers serve on without it
        world.fleet.start_host(0)
        code = ship.wait(120)
        world.settled_hosts()
    return HostKilled(code, load, started_before, world.fleet.statuses()[0]["started_at"])


def wait_for(check: Callable[[], Any], what: str, timeout: float = 120,
             every: float = 0.05) -> Any:
    """Poll until `check()` is truthy; the deadline only guards against a hang."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = check()
        if answer:
            return answer
        time.sleep(every)
    raise AssertionError(f"gave up waiting for {what}")
