"""Unmodified apps on a local fleet under a steady stream of requests: a Flask app under
gunicorn, an ASGI app under uvicorn and a Node server, each rolled from one release to the
next on the host's shared socket (systemd's socket activation). Real processes, real sockets,
real signals."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rollout.local import LocalFleet
from shiptypes import ProviderContext, ReleaseRef
from tests.rollout.apps import app_release, gunicorn, gunicorn_asgi, node, uvicorn
from tests.rollout.conftest import wait_done, wait_for
from tests.rollout.loadgen import Load

Fleet = Callable[..., LocalFleet]


@pytest.fixture
def release(tmp_path: Path, fleet_context: ProviderContext) -> Callable[[str, int], ReleaseRef]:
    return lambda kind, number: app_release(tmp_path, fleet_context, kind, number)


def roll(fleet: LocalFleet, old: ReleaseRef, new: ReleaseRef, keep_alive: bool = True) -> Load:
    """Publish `old`, then `new` under load; the load's outcomes, ended once every host has
    served `new` for a moment after its restart."""
    fleet.publish(old)
    wait_done(fleet)
    with Load(fleet.host_urls, clients=8, rate=20.0, keep_alive=keep_alive) as load:
        wait_for(lambda: len(load.outcomes) > 40, "steady load")
        fleet.publish(new)
        status = wait_done(fleet, timeout=90.0)
        converged = time.monotonic()
        wait_for(lambda: len(load.between(converged)) > 40, "load after the restart")
    assert status.converged == len(fleet.hosts), fleet.statuses()
    load.converged = converged  # type: ignore[attr-defined]
    return load


def assert_served(load: Load, old: ReleaseRef, new: ReleaseRef) -> None:
    """No request failed, and none was answered by the old release once every host had
    finished its restart."""
    assert load.failures() == [], load.failures()[:5]
    after = load.between(load.converged)  # type: ignore[attr-defined]
    assert {o.release for o in after} == {new.name}
    assert {o.body for o in after} == {new.name}
    assert {o.release for o in load.outcomes} == {old.name, new.name}


@pytest.mark.parametrize("kind, spec", [("flask", gunicorn(2)), ("node", node())])
def test_an_unmodified_app_rolls_under_load_and_fails_no_request(
        local_fleet: Fleet, release: Callable[[str, int], ReleaseRef], kind: str,
        spec: dict[str, object]) -> None:
    fleet = local_fleet(hosts=2, workers=2, app=spec)
    old, new = release(kind, 1), release(kind, 2)

    load = roll(fleet, old, new)

    assert_served(load, old, new)
    drains = [status["drains"] for status in fleet.statuses()]
    assert sum(d["clean"] for d in drains) == 4, drains  # every old instance exited 0


@pytest.mark.parametrize("spec", [uvicorn(), gunicorn_asgi(2)], ids=["uvicorn", "worker-class"])
def test_uvicorn_rolls_on_the_shared_socket_which_is_never_refused(
        local_fleet: Fleet, release: Callable[[str, int], ReleaseRef],
        spec: dict[str, object]) -> None:
    """uvicorn's shutdown (uvicorn/server.py, Server.shutdown) closes the connections it
    accepted but has not read a request from yet, and idle keep-alive ones: a client sending
    on one just then gets no answer. gunicorn's uvicorn worker class runs the same shutdown,
    so it does the same. The agent cannot stop one process of a shared socket from accepting
    without the process's own help; what it owes is that the host's socket is never refused
    nor reset, and that the new release answers alone once restarted."""
    fleet = local_fleet(hosts=2, workers=2, app=spec)
    old, new = release("asgi", 1), release("asgi", 2)

    load = roll(fleet, old, new, keep_alive=False)

    after = load.between(load.converged)  # type: ignore[attr-defined]
    assert {(o.release, o.body) for o in after} == {(new.name, new.name)}
    assert {o.release for o in load.outcomes} == {old.name, new.name, None} - (
        set() if load.failures() else {None})
    assert all("RemoteDisconnected" in (o.error or "") for o in load.failures()), \
        load.failures()[:5]


@pytest.mark.parametrize("healthy, timeout, reason", [
    ("no", 3.0, "not healthy after 3s"),
    # it answered once, then no more: it had not settled, the old instance never stopped
    ("once", 20.0, "stopped answering its health check right after it first did")])
def test_an_app_never_healthy_fails_its_host_and_the_old_release_keeps_serving(
        local_fleet: Fleet, release: Callable[[str, int], ReleaseRef], healthy: str,
        timeout: float, reason: str) -> None:
    spec = gunicorn(1 if healthy == "once" else 2)
    fleet = local_fleet(hosts=2, workers=1, app=spec)
    fleet.publish(release("flask", 1))
    wait_done(fleet)
    sick = {**spec, "env": {"HEALTHY": healthy}, "health": {"path": "/healthz", "timeout": timeout}}
    fleet.rollout = fleet.rollout.running(sick)

    with Load(fleet.host_urls, clients=4, rate=20.0) as load:
        fleet.publish(release("flask", 2))
        status = wait_done(fleet, timeout=60.0)
        failed = time.monotonic()
        wait_for(lambda: len(load.between(failed)) > 20, "load after the failure")

    assert status.failed == 2
    assert all(reason in f.reason for f in status.failures), status.failures
    assert load.failures() == []
    # An instance accepts on the shared socket as soon as it serves, healthy or not: the
    # failed one may have answered a few; once it was stopped, only the old release answers.
    assert {o.release for o in load.between(failed)} == {"test#1"}
    assert [s["current_release"] for s in fleet.statuses()] == [1, 1]


def test_an_app_slow_to_boot_has_no_gap_on_a_host_of_one_instance(
        local_fleet: Fleet, release: Callable[[str, int], ReleaseRef]) -> None:
    fleet = local_fleet(hosts=1, workers=1, app=gunicorn(1, BOOT_SECONDS="2"))
    old, new = release("flask", 1), release("flask", 2)

    load = roll(fleet, old, new)

    assert_served(load, old, new)
    # The old instance was told to stop only after the new one had booted.
    output = (fleet.hosts[0].layout.worker_log).read_text()
    events = re.findall(r"ready test#2|Handling signal: term", output)
    assert events[:2] == ["ready test#2", "Handling signal: term"], events


def test_a_restarted_agent_adopts_app_instances_and_rolls_them(
        local_fleet: Fleet, release: Callable[[str, int], ReleaseRef]) -> None:
    fleet = local_fleet(hosts=1, workers=2, app=gunicorn(2))
    old, new = release("flask", 1), release("flask", 2)
    fleet.publish(old)
    wait_done(fleet)
    instances = {w["pid"] for w in fleet.statuses()[0]["workers"]}

    with Load(fleet.host_urls, clients=4, rate=20.0) as load:
        fleet.kill_host(0)
        fleet.start_host(0)  # takes the shared socket from an instance, adopts both
        adopted = {w["pid"] for w in fleet.statuses()[0]["workers"]}
        fleet.publish(new)
        wait_done(fleet, timeout=60.0)
        converged = time.monotonic()
        wait_for(lambda: len(load.between(converged)) > 20, "load after the restart")

    assert adopted == instances
    assert load.failures() == []
    assert {o.release for o in load.between(converged)} == {new.name}
    status = fleet.statuses()[0]
    assert status["drains"]["killed"] == 0  # adopted: no exit code to read, but not killed
    assert not {w["pid"] for w in status["workers"]} & instances
