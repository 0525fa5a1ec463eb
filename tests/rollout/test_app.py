"""The example app as a worker process: endpoints, the host-wide counter, broken releases,
and the drain on SIGTERM. Real processes on real sockets, handed over as the agent does."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.rollout.conftest import APP, wait_for


@dataclass
class Worker:
    process: subprocess.Popen[str]
    private_port: int  # this worker alone (the agent's health socket)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.private_port}{path}"

    def drain(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=15)
        return self.process.returncode, err


@pytest.fixture
def shared() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener


@pytest.fixture
def start(tmp_path: Path, shared: socket.socket) -> Iterator[Callable[..., Worker]]:
    """start(release_json={...}, drain_timeout=…, idle_grace=…): a worker on the shared socket."""
    started: list[Worker] = []

    def run(release_json: dict[str, Any] | None = None, drain_timeout: float = 5.0,
            idle_grace: float = 0.3, wait: bool = True) -> Worker:
        app = tmp_path / f"release-{len(started)}"
        shutil.copytree(APP, app)
        (app / "release.json").write_text(json.dumps({"release": "test#7", **(release_json or {})}))
        private = socket.create_server(("127.0.0.1", 0))
        command = [sys.executable, str(app / "app.py"), "--fd", str(shared.fileno()),
                   "--health-fd", str(private.fileno()), "--counters", str(tmp_path / "counters"),
                   "--drain-timeout", str(drain_timeout), "--idle-grace", str(idle_grace)]
        with private:
            process = subprocess.Popen(command, pass_fds=(shared.fileno(), private.fileno()),
                                       stderr=subprocess.PIPE, text=True)
            worker = Worker(process, private.getsockname()[1])
        started.append(worker)
        if wait:
            wait_for(lambda: healthy(worker), "the worker to be healthy", 10)
        return worker

    yield run
    for worker in started:
        worker.process.kill()
        worker.process.communicate()


def healthy(worker: Worker) -> bool:
    try:
        return requests.get(worker.url("/healthz"), timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def shared_url(listener: socket.socket, path: str = "/") -> str:
    return f"http://127.0.0.1:{listener.getsockname()[1]}{path}"


def test_it_names_its_release_and_counts_messages(
        start: Callable[..., Worker], shared: socket.socket) -> None:
    worker = start()
    page = requests.get(shared_url(shared))
    created = [requests.post(shared_url(shared, "/messages"), data="hi") for _ in range(3)]

    assert page.status_code == 200
    assert page.headers["X-Release"] == "test#7"
    assert page.text == f"release test#7 worker {worker.process.pid}\n"
    assert [r.status_code for r in created] == [201] * 3
    assert requests.get(shared_url(shared, "/metrics")).json() == {
        "release": "test#7", "counters": {"messages_created": 3}}
    assert requests.get(shared_url(shared, "/nowhere")).status_code == 404


def test_the_counter_is_the_hosts_total_whichever_worker_answers(
        start: Callable[..., Worker], shared: socket.socket) -> None:
    first, second = start(), start()
    for _ in range(10):
        requests.post(shared_url(shared, "/messages"), headers={"Connection": "close"})
    requests.post(first.url("/messages"))
    requests.post(second.url("/messages"))

    for worker in (first, second):
        assert requests.get(worker.url("/metrics")).json()["counters"] == {"messages_created": 12}


def test_a_release_built_not_to_count_messages_does_not(
        start: Callable[..., Worker], shared: socket.socket) -> None:
    start({"count_messages": False})
    answers = [requests.post(shared_url(shared, "/messages")).status_code for _ in range(3)]

    assert answers == [201] * 3
    assert requests.get(shared_url(shared, "/metrics")).json()["counters"] == {
        "messages_created": 0}


def test_broken_releases_crash_on_boot_or_fail_their_health_check(
        start: Callable[..., Worker]) -> None:
    crashing = start({"crash_on_boot": True}, wait=False)
    unhealthy = start({"healthy": False}, wait=False)

    assert crashing.process.wait(timeout=10) == 1
    assert wait_for(lambda: status_of(unhealthy.url("/healthz")), "an answer", 10) == 503


def status_of(url: str) -> int | None:
    try:
        return requests.get(url, timeout=1).status_code
    except requests.ConnectionError:
        return None


def test_a_drain_finishes_in_flight_requests_with_connection_close_and_exits_cleanly(
        start: Callable[..., Worker], shared: socket.socket) -> None:
    draining = start(idle_grace=1.0)
    start()  # serves the shared socket while the other drains
    slow: list[requests.Response] = []
    request = threading.Thread(target=lambda: slow.append(
        requests.get(draining.url("/slow?ms=600"))))
    kept = http.client.HTTPConnection("127.0.0.1", draining.private_port)
    kept.request("GET", "/")
    kept.getresponse().read()  # a keep-alive connection, used again during the drain
    idle = socket.create_connection(("127.0.0.1", draining.private_port))
    request.start()
    wait_for(lambda: load(draining) >= (4, 2), "the slow request and both connections", 5)

    draining.process.send_signal(signal.SIGTERM)
    wait_for(lambda: refused(draining.private_port), "the worker to stop accepting", 5)
    kept.request("GET", "/")
    again = kept.getresponse()
    again.read()
    during = [requests.get(shared_url(shared)).status_code for _ in range(20)]
    code, err = draining.drain()
    request.join()

    assert code == 0
    assert "aborted 0 in-flight requests" in err
    assert slow[0].status_code == 200 and slow[0].headers["Connection"] == "close"
    assert again.status == 200 and again.getheader("Connection") == "close"
    assert idle.recv(1) == b""  # the idle keep-alive connection was closed, not abandoned
    assert during == [200] * 20


def test_a_drain_that_times_out_reports_the_requests_it_cut_short(
        start: Callable[..., Worker]) -> None:
    worker = start(drain_timeout=0.3)
    cut: list[BaseException] = []

    def call() -> None:
        try:
            requests.get(worker.url("/slow?ms=5000"))
        except requests.ConnectionError as error:
            cut.append(error)

    request = threading.Thread(target=call)
    request.start()
    wait_for(lambda: load(worker)[1] >= 2, "the request in flight", 5)
    code, err = worker.drain()
    request.join()

    assert code == 3
    assert "aborted 1 in-flight requests" in err
    assert len(cut) == 1


def load(worker: Worker) -> tuple[int, int]:
    """Open connections and requests in flight, counting the health check asking."""
    health = requests.get(worker.url("/healthz")).json()
    return health["connections"], health["in_flight"]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port)).close()
    except ConnectionRefusedError:
        return True
    return False
