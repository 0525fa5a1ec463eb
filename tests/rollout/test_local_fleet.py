"""The local fleet under a steady stream of requests: rolling restarts, rollbacks, a release
that crashes on boot, and an agent killed mid-restart. Real processes, real sockets."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rollout.local import LocalFleet, LocalFleetConfig
from shiptypes import FleetStatus, ProviderContext, ReleaseRef, RolloutSettings, ScaledClock
from tests.rollout.conftest import wait_done, wait_for
from tests.rollout.loadgen import Load

Fleet = Callable[..., LocalFleet]
Release = Callable[..., ReleaseRef]


def releases_seen(load: Load, start: float, end: float = float("inf")) -> set[str | None]:
    return {o.release for o in load.between(start, end)}


class Capacity(threading.Thread):
    """Samples every host's status: the fewest workers serving at any sample, per host."""

    def __init__(self, fleet: LocalFleet) -> None:
        super().__init__(daemon=True)
        self.fleet = fleet
        self.fewest = [len(s["workers"]) for s in fleet.statuses()]
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            for index, status in enumerate(self.fleet.statuses()):
                serving = sum(w["state"] == "serving" for w in status.get("workers", []))
                self.fewest[index] = min(self.fewest[index], serving)


def assert_drains_clean(fleet: LocalFleet, at_least: int) -> None:
    """No worker was killed, or cut a request short, while it drained."""
    drains = [status["drains"] for status in fleet.statuses()]
    assert sum(d["aborted"] + d["killed"] for d in drains) == 0, drains
    assert sum(d["clean"] for d in drains) >= at_least, drains


def test_rolling_restart_and_rollback_under_load_fail_no_request(
        local_fleet: Fleet, tarball_release: Release) -> None:
    fleet = local_fleet(hosts=4, workers=3)
    old, new = tarball_release(1), tarball_release(2)
    fleet.publish(old)
    wait_done(fleet)
    capacity = Capacity(fleet)
    with Load(fleet.host_urls, clients=8, rate=25.0) as load:
        capacity.start()
        time.sleep(0.3)
        restart = time.monotonic()
        fleet.publish(new)
        status = wait_done(fleet)
        assert (status.converged, status.failed) == (4, 0), status.failures
        converged = time.monotonic()
        time.sleep(0.3)
        rollback_at = time.monotonic()
        fleet.publish(old)  # the rollback: a kept release
        rollback = wait_done(fleet)
        rolled_back = time.monotonic()
        time.sleep(0.3)
        capacity.stop.set()

    assert load.failures() == []
    assert capacity.fewest == [3] * 4  # a surge: the replacement serves before the old drains
    assert {o.release for o in load.outcomes} == {"test#1", "test#2"}  # every response names it
    assert all(o.release and o.release in o.body for o in load.outcomes)
    assert releases_seen(load, restart, converged) == {"test#1", "test#2"}  # served mixed
    assert releases_seen(load, converged, rollback_at) == {"test#2"}
    assert releases_seen(load, rolled_back) == {"test#1"}
    assert (rollback.converged, rollback.failed) == (4, 0)
    assert not any(s["unpacked"] for s in fleet.statuses())  # the rollback downloaded nothing
    assert_drains_clean(fleet, at_least=2 * 4 * 3)
    assert status.first_request_at and status.half_at and status.p95_at and status.converged_at
    assert status.first_request_at <= status.half_at <= status.p95_at <= status.converged_at


def test_a_release_that_crashes_on_boot_leaves_every_host_on_the_old_one(
        local_fleet: Fleet, tarball_release: Release) -> None:
    fleet = local_fleet(hosts=3, workers=2)
    good, broken = tarball_release(1), tarball_release(2, crash_on_boot=True)
    fleet.publish(good)
    wait_done(fleet)
    with Load(fleet.host_urls, clients=4, rate=25.0) as load:
        fleet.publish(broken)
        status = wait_done(fleet)
        after_failure = time.monotonic()
        time.sleep(0.3)
        fleet.publish(good)  # what the orchestrator does when too many hosts fail
        revert = wait_done(fleet)

    assert (status.converged, status.failed, status.started) == (0, 3, 0)
    assert all("exited with code 1 before it was healthy" in f.reason for f in status.failures)
    assert load.failures() == []
    assert releases_seen(load, 0.0) == {"test#1"}
    assert releases_seen(load, after_failure)
    for host in fleet.statuses():
        assert host["current_release"] == 1
        assert [(w["release"], w["healthy"]) for w in host["workers"]] == [(1, True)] * 2
    assert (revert.converged, revert.failed) == (3, 0)


def test_an_agent_killed_mid_restart_reconciles_and_other_hosts_never_fail(
        local_fleet: Fleet, tarball_release: Release) -> None:
    fleet = local_fleet(hosts=3, workers=3, stagger=0.0)
    old = tarball_release(1)
    slow = tarball_release(2, boot_delay=0.4)  # slow to boot: time to kill the agent mid-way
    fleet.publish(old)
    wait_done(fleet)
    with Load(fleet.host_urls, clients=6, rate=25.0) as load:
        fleet.publish(slow)
        wait_for(lambda: mid_restart(fleet.statuses()[0]), "host-0 mid-restart")
        fleet.kill_host(0)
        layout, started_at = fleet.hosts[0].layout, fleet.statuses()[0]["started_at"]
        records = json.loads(layout.workers.read_text())
        before = {r["pid"] for r in records}
        # Killed before recording one worker, and after recording another as draining but
        # before telling it: the new agent must tell it, or it serves on forever.
        told_nothing = next(r for r in records[:-1] if r["state"] == "serving")
        told_nothing["state"] = "draining"
        layout.workers.write_text(json.dumps(records[:-1]))
        time.sleep(0.5)  # its workers keep serving without it
        fleet.start_host(0)
        status = wait_done(fleet)
        time.sleep(0.3)

    assert (status.converged, status.failed) == (3, 0)
    assert [o for o in load.failures() if o.host != 0] == []
    host = fleet.statuses()[0]
    assert [(w["release"], w["healthy"]) for w in host["workers"]] == [(2, True)] * 3
    assert host["current_release"] == 2
    assert host["started_at"] == started_at  # the same restart carried on, not begun again
    gone = before - {w["pid"] for w in host["workers"]}
    wait_for(lambda: not any(alive(pid) for pid in gone), "the old workers to exit")
    assert load.failures() == []  # host-0 too: its workers served while its agent was down


def mid_restart(status: dict[str, Any]) -> bool:
    workers = status.get("workers", [])
    return (status.get("phase") == "restarting"
            and any(w["release"] == 2 and w["healthy"] for w in workers)
            and any(w["release"] == 1 for w in workers))


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its reaper."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_scaled_clock_scales_the_stagger_and_reports_pipeline_time(
        tmp_path: Path, tarball_release: Release) -> None:
    clock = ScaledClock(speed=20.0)
    context = ProviderContext("test", "local", clock=clock, state_dir=tmp_path / "scaled")
    config = LocalFleetConfig(driver="local", hosts=2, workers=1, boot_timeout=10)
    with LocalFleet(config, RolloutSettings(stagger="4s", drain_timeout=3), context) as fleet:
        assert fleet.observe() == FleetStatus(release=None, hosts=2, started=0, converged=0,
                                              failed=0)
        published = clock.now()
        fleet.publish(tarball_release(1))
        status = wait_done(fleet)
        stagger = json.loads(fleet.hosts[0].layout.desired.read_text())["stagger"]

    assert stagger == 4 / 20  # real seconds
    assert status.release == 1 and status.converged == 2
    moments = [status.first_request_at, status.all_started_at, status.half_at, status.p95_at,
               status.converged_at]
    assert all(m is not None and published <= m <= clock.now() for m in moments), moments
