"""Hosts are hosts: the local fleet's agents outlive the ship process that started them and
the next one adopts them; reconcile names hosts that are gone; a host with no worker refuses
connections at once; a host of one worker restarts with no gap. Real processes, real
signals, real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import yaml

from orchestrator import config
from orchestrator.reconcile import attention, reconcile
from orchestrator.release import State
from orchestrator.runtime import Ship
from orchestrator.store import Store
from rollout.agent import live_workers
from rollout.local import LocalFleet, LocalFleetConfig, fleet_processes, stop_agents
from shiptypes import ProviderContext, ReleaseRef, RolloutSettings, ScaledClock
from tests.conftest import ROOT
from tests.faults.conftest import left_at
from tests.rollout.conftest import wait_done, wait_for
from tests.rollout.loadgen import Load
from tests.rollout.test_local_fleet import Capacity, assert_drains_clean

Release = Callable[..., ReleaseRef]
SETTINGS = RolloutSettings(stagger=0, drain_timeout=3)  # as tests/rollout/fleet_owner.py


@pytest.fixture
def hosts_root(tmp_path: Path) -> Iterator[Path]:
    """A fleet root whose agents and workers are all stopped after the test."""
    root = tmp_path / "hosts"
    yield root
    stop_agents(root)
    assert fleet_processes(root) == []


def fleet_at(root: Path, hosts: int = 2, workers: int = 1) -> LocalFleet:
    config = LocalFleetConfig(driver="local", hosts=hosts, workers=workers, root=str(root),
                              boot_timeout=10, idle_grace=0.2)
    return LocalFleet(config, SETTINGS, ProviderContext("test", "local",
                                                        state_dir=root.parent))


def serving(url: str) -> str:
    return requests.get(url, timeout=10).headers["X-Release"]


def kill_host_and_workers(fleet: LocalFleet, index: int) -> None:
    """The host is gone: its agent and every worker SIGKILLed."""
    workers = live_workers(fleet.hosts[index].layout)
    fleet.kill_host(index)
    for worker in workers:
        worker.signal(signal.SIGKILL)
    wait_for(lambda: not any(w.alive() for w in workers), "the workers to die")


def test_agents_outlive_a_killed_ship_process_and_the_next_one_adopts_them(
        tmp_path: Path, hosts_root: Path, tarball_release: Release) -> None:
    release = tmp_path / "release.pickle"
    release.write_bytes(pickle.dumps(tarball_release(1)))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"root": str(hosts_root), "hosts": 2, "workers": 1,
                                "release": str(release)}))
    owner = subprocess.Popen([sys.executable, "-m", "tests.rollout.fleet_owner", str(spec)],
                             cwd=ROOT, stdout=subprocess.PIPE)
    assert owner.stdout is not None and owner.stdout.readline() == b"ready\n"
    processes = set(fleet_processes(hosts_root))
    owner.send_signal(signal.SIGKILL)
    owner.wait()

    adopted = fleet_at(hosts_root)
    pids = adopted.agent_pids()
    assert [serving(url) for url in adopted.host_urls] == ["test#1"] * 2
    assert set(fleet_processes(hosts_root)) == processes  # no duplicate, nothing lost
    assert len(processes) == 2 * (1 + 1) and None not in pids and adopted.revived == []
    status = adopted.observe()
    assert (status.release, status.converged) == (1, 2)
    assert adopted.check_hosts() == []

    kill_host_and_workers(adopted, 1)
    again = fleet_at(hosts_root)  # starts only the missing agent
    assert again.agent_pids()[0] == pids[0] and again.agent_pids()[1] not in (None, pids[1])
    assert [f.host for f in again.revived] == ["host-1"]
    assert "no worker was left serving" in again.revived[0].reason
    wait_for(lambda: serving(again.host_urls[1]) == "test#1", "host-1 to serve its release")
    assert again.host_urls == adopted.host_urls

    again.close()
    assert fleet_processes(hosts_root) == []


def pipelines_yaml(root: Path, agents: str) -> str:
    """One pipeline whose fleet is the local fleet at `root`, with SETTINGS."""
    fleet = {"driver": "local", "hosts": 2, "workers": 1, "root": str(root), "boot_timeout": 10,
             "idle_grace": 0.2, "agents": agents}
    pipeline = {"region": "local", "repo": {"name": "example/chat"}, "build": {"type": "sim"},
                "preprod": {"fleet": {"driver": "sim", "hosts": 1}}, "fleet": fleet,
                "rollout": {"stagger": 0, "drain_timeout": 3},
                "heartbeat": {"source": {"type": "sim"}, "metrics": [
                    {"name": "messages_created", "query": "messages_created"}]},
                "notify": {"console": False}}
    return yaml.safe_dump({"version": 1, "pipelines": {"us": pipeline}})


@pytest.mark.parametrize("agents", ["start", "attach"])
def test_reconcile_names_the_hosts_of_a_live_release_that_are_gone(
        tmp_path: Path, hosts_root: Path, tarball_release: Release, agents: str) -> None:
    fleet = fleet_at(hosts_root)
    fleet.publish(tarball_release(1))
    wait_done(fleet)
    store = Store(f"sqlite:///{tmp_path}/ship.db", ScaledClock(10.0))
    live = left_at(store, 1, State.LIVE)
    kill_host_and_workers(fleet, 1)
    fleet.detach()  # this ship process stops; its hosts serve on

    loaded = config.parse(pipelines_yaml(hosts_root, agents))
    ship = Ship(loaded, store, notifiers=[], state_dir=tmp_path / "state")
    outcomes = asyncio.run(reconcile(ship, watch=False))
    ship.close_providers()

    [down] = [o for o in outcomes if o.action == "hosts_down"]
    assert (down.release, down.was) == (live.name, "live")
    assert "host-1" in down.detail and "host-0" not in down.detail
    assert ("started again" if agents == "start" else "is not running") in down.detail
    [fault] = [f for f in attention(store, "us") if f["kind"] == "hosts_down"]
    assert fault["message"] == down.detail
    store.close()


def refuses_at_once(url: str) -> bool:
    """A connection is refused (or reset), never left hanging."""
    try:
        requests.get(url, timeout=10)
    except requests.ConnectionError as error:
        return "timed out" not in str(error).lower()
    return False


def test_a_host_with_no_worker_refuses_connections_instead_of_hanging_them(
        local_fleet: Callable[..., LocalFleet], tarball_release: Release) -> None:
    fleet = local_fleet(hosts=1, workers=1, stagger=3600.0)
    url, port = fleet.host_urls[0], fleet.hosts[0].port
    with pytest.raises(ConnectionRefusedError), socket.create_connection(
            ("127.0.0.1", port), timeout=10):
        pass  # a new host, nothing published
    fleet.publish(tarball_release(1))
    waiting = wait_for(lambda: (s := fleet.statuses()[0]).get("phase") == "waiting" and s,
                       "the host to wait out its stagger")
    assert refuses_at_once(url)
    assert fleet.statuses()[0]["publish"] == waiting["publish"]
    assert fleet.statuses()[0]["phase"] == "waiting"  # refused while waiting, not after


def test_a_host_whose_first_release_crashes_refuses_connections(
        local_fleet: Callable[..., LocalFleet], tarball_release: Release) -> None:
    fleet = local_fleet(hosts=1, workers=1, stagger=0.0)
    fleet.publish(tarball_release(1, crash_on_boot=True))
    status = wait_done(fleet)
    assert status.failed == 1
    assert refuses_at_once(fleet.host_urls[0])


def test_a_host_of_one_slow_booting_worker_restarts_with_no_gap_under_load(
        local_fleet: Callable[..., LocalFleet], tarball_release: Release) -> None:
    fleet = local_fleet(hosts=1, workers=1, stagger=0.0, boot_timeout=30.0)
    old, new = tarball_release(1, boot_delay=2.0), tarball_release(2, boot_delay=2.0)
    fleet.publish(old)
    wait_done(fleet)
    capacity = Capacity(fleet)
    with Load(fleet.host_urls, clients=4, rate=20.0) as load:
        capacity.start()
        wait_for(lambda: len(load.outcomes) >= 20, "steady load")
        fleet.publish(new)
        status = wait_done(fleet)
        wait_for(lambda: serving(fleet.host_urls[0]) == "test#2", "the new release")
        capacity.stop.set()

    assert (status.converged, status.failed) == (1, 0)
    assert load.failures() == []
    assert capacity.fewest == [1]  # a worker served at every moment
    assert {o.release for o in load.outcomes} == {"test#1", "test#2"}
    assert_drains_clean(fleet, at_least=1)
    assert os.path.exists(fleet.hosts[0].layout.current_link)
