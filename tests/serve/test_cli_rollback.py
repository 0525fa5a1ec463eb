"""`ship rollback` from the CLI: handed to a running `ship serve` on the same store and
pipelines file (its operator API, behind the token of its handle in .ship/serve.json), or
done by the CLI itself, outside Prefect's engine, when no server runs.

The tests share one server, with two releases shipped on `us`, and run in order: refusals
first (they change nothing), then the rollback, which leaves the pipeline locked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from orchestrator import handle
from orchestrator.release import SHIPPED, State
from tests.conftest import ROOT
from tests.serve.conftest import Serving, config_text, push, sha, wait_for

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Iterator[Serving]:
    serving = Serving(tmp_path_factory.mktemp("api"), prefect_api,
                      config_text(watch="60s", pipelines=("us",)))
    try:
        for n in (1, 2):
            serving.github(push([sha(n, "api")], author="ann"))
            wait_for(lambda n=n: state_of(serving, n) in SHIPPED, f"us#{n} to ship", 45)
        wait_for(lambda: state_of(serving, 2) == State.DONE, "us#2's watch to end", 45)
        yield serving
    finally:
        serving.stop()


def state_of(server: Serving, number: int) -> State | None:
    release = server.store.release_by_number("us", number)
    return release.state if release else None


def world(server: Serving) -> tuple[Any, ...]:
    store = server.store
    state = store.pipeline_state("us")
    return (len(store.events("us", limit=10_000)), state.lock, state.live.id,
            len(store.rollbacks("us")))


def served_handle(server: Serving) -> handle.ServeHandle:
    found = handle.find(server.dir / ".ship", server.dir / "pipelines.yaml", server.db_url)
    assert found is not None and found.pid == server.process.pid
    return found


def ask(server: Serving, body: Any, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(f"{server.url}/api/rollback", data=data, headers=headers, timeout=30)


def ship(server: Serving, *args: str, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    env = env or {**os.environ, "SHIP_DATABASE_URL": server.db_url, "PYTHONPATH": str(ROOT),
                  "SHIP_USER": "carol"}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "--config",
                           "pipelines.yaml", *args], cwd=server.dir, env=env,
                          capture_output=True, text=True, timeout=120)


ROLLBACK = {"pipeline": "us", "actor": "carol", "reason": "bad deploy", "to": 1}


def test_the_handle_names_the_server_and_is_private(server: Serving) -> None:
    found = served_handle(server)
    assert found.url == server.url
    assert (server.dir / ".ship" / handle.HANDLE_FILE).stat().st_mode & 0o077 == 0
    # Another store or another pipelines file is another server's business.
    assert handle.find(server.dir / ".ship", server.dir / "other.yaml", server.db_url) is None
    assert handle.find(server.dir / ".ship", server.dir / "pipelines.yaml",
                       "sqlite:////elsewhere/ship.db") is None


def test_without_the_token_the_api_refuses_and_changes_nothing(server: Serving) -> None:
    before = world(server)
    assert ask(server, ROLLBACK, None).status_code == 401
    assert ask(server, ROLLBACK, "not-the-token").status_code == 401
    assert ask(server, ROLLBACK, "").status_code == 401
    assert world(server) == before


@pytest.mark.parametrize(("body", "status", "says"), [
    (b"{not json", 400, "not JSON"),
    (b"[" * 10_000, 400, "nested too deeply"),
    (b"x" * 20_000, 413, "at most 16,384 bytes"),
    ([1, 2], 400, "body: expected an object, got a list"),
    ({**ROLLBACK, "to": 10**30}, 400, "is not a release number"),
    ({**ROLLBACK, "to": 0}, 400, "is not a release number"),
    ({**ROLLBACK, "to": "1"}, 400, "to: expected a release number"),
    ({**ROLLBACK, "to": None, "minutes_ago": -1}, 400, "minutes_ago"),
    ({**ROLLBACK, "to": None, "minutes_ago": 1e308 * 10}, 400, "minutes_ago"),
    ({**ROLLBACK, "minutes_ago": 5}, 400, "not both"),
    ({**ROLLBACK, "reason": ""}, 400, "reason"),
    ({**ROLLBACK, "actor": ["x"]}, 400, "actor: expected a string, got a list"),
    ({**ROLLBACK, "pipeline": "mars"}, 404, "mars"),
    ({**ROLLBACK, "to": 99}, 400, "no release #99"),
    ({**ROLLBACK, "to": 2}, 409, "live already"),
])
def test_bad_requests_are_refused_and_change_nothing(server: Serving, body: Any, status: int,
                                                      says: str) -> None:
    before = world(server)
    answer = ask(server, body, served_handle(server).token)
    assert answer.status_code == status, answer.text
    assert says in answer.text
    assert "Traceback" not in server.log()
    if "release" in says or "live" in says:  # refused by the rollback: only its event
        assert world(server)[1:] == before[1:]
    else:
        assert world(server) == before


def test_the_cli_refuses_bad_input_through_the_server_with_exit_2(server: Serving) -> None:
    before = world(server)
    done = ship(server, "rollback", "us", "--to", "99", "--reason", "typo")
    assert done.returncode == 2, done.stderr
    assert "no release #99" in done.stderr and "Traceback" not in done.stderr
    assert world(server)[1:] == before[1:]


def test_ship_rollback_is_handed_to_the_running_server(server: Serving) -> None:
    done = ship(server, "rollback", "us", "--to", "1", "--reason", "bad deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rolled back us#2 → us#1" in done.stdout
    assert "from this process" not in done.stderr  # it did not fall back to doing it itself
    store = server.store
    rollback = store.rollbacks("us", limit=1)[0]
    assert (rollback.actor, rollback.reason, rollback.outcome) == ("carol", "bad deploy", "done")
    assert store.pipeline_state("us").lock.owner == "carol"
    runs = [e.data for e in store.events("us", limit=200)
            if e.kind == "flow_run" and e.data.get("rollback_id") == rollback.id]
    assert [run["owner"]["pid"] for run in runs] == [server.process.pid]
    assert runs[0]["flow_run_id"]  # a Prefect flow run of the server


def test_with_no_server_the_cli_rolls_back_without_starting_prefect(
        tmp_path: Path, server: Serving, prefect_api: str) -> None:
    """After the server stops, the CLI does it itself, and starts no temporary Prefect API
    for it (one would cost ~10 s before the fleet is told)."""
    server.stop()
    assert not (server.dir / ".ship" / handle.HANDLE_FILE).exists()
    store = server.store.__class__(server.db_url)
    store.unlock("us", "carol", "ship again")
    base = {**os.environ, "SHIP_DATABASE_URL": server.db_url, "PYTHONPATH": str(ROOT)}
    shipped = ship(server, "--speed", "60", "deploy", "us", "--no-watch",
                   env=base | {"PREFECT_API_URL": prefect_api, "SHIP_USER": "ann"})
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    assert store.pipeline_state("us").live.number == 3
    env = {k: v for k, v in base.items() if not k.startswith("PREFECT_")}
    env |= {"SHIP_USER": "dave", "PREFECT_HOME": str(tmp_path / "prefect-home")}
    done = ship(server, "rollback", "us", "--to", "1", "--reason", "bad again", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rolled back us#3 → us#1" in done.stdout
    assert not list((tmp_path / "prefect-home").glob("*.db"))  # no temporary API ran
    rollback = store.rollbacks("us", limit=1)[0]
    assert (rollback.actor, rollback.outcome) == ("dave", "done")
    assert store.pipeline_state("us").lock.owner == "dave"
    store.close()
