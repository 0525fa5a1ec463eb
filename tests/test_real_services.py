"""End to end, driven only through `ship serve` and signed push webhooks: a git repository
made here holds an unmodified app (Flask under gunicorn, an ASGI app under gunicorn's uvicorn
worker, a Node `http` server). Commit 1 is built, booted by the `boot` gate, deployed to a
pre-prod host and rolled to a local fleet of 2 hosts; commit 2 changes the answer; commit 3
breaks the health check and is halted by `boot`. A load generator runs through it all: no
request fails, and every answer carries a SHA the fleet was told to run."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.release import State
from orchestrator.store import Release
from rollout.local import stop_agents
from tests.gitrepo import Repo
from tests.rollout.loadgen import Load
from tests.serve.conftest import Serving, push, wait_for
from tests.test_local_e2e import _free_base_port

PIPELINE = "web"
REPO_NAME = "example/web"
DEADLINE = 120.0
PYTHON = sys.executable

FLASK = '''\
import os

from flask import Flask

SHA = os.environ["SHIP_SHA"]
app = Flask(__name__)


@app.get("/healthz")
def healthz():
    return ("ok", 200) if HEALTHY else ("broken", 503)


@app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
@app.route("/<path:path>", methods=["GET", "POST"])
def answer(path):
    return f"{GREETING} from {SHA}", 200, {"X-Release": SHA}
'''

ASGI = '''\
import os

SHA = os.environ["SHIP_SHA"]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/healthz":
        status, body = (200, b"ok") if HEALTHY else (503, b"broken")
    else:
        status, body = 200, f"{GREETING} from {SHA}".encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"x-release", SHA.encode()), (b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
'''

NODE = '''\
const http = require("http");
const net = require("net");
const sha = process.env.SHIP_SHA;
function answer(request, response) {
  request.resume();
  request.on("end", () => {
    response.setHeader("X-Release", sha);
    if (request.url === "/healthz") {
      response.statusCode = HEALTHY ? 200 : 503;
      response.end(HEALTHY ? "ok" : "broken");
    } else {
      response.end(`${GREETING} from ${sha}`);
    }
  });
}
const shared = http.createServer(answer);
const health = http.createServer(answer);
shared.listen({fd: 3});
health.listen(Number(process.argv[2]), "127.0.0.1");
// A clean drain: stop accepting, answer open connections with Connection: close, then close
// those left idle (http's close() drops idle keep-alive connections at once).
let draining = false;
shared.on("request", (request, response) => {
  if (draining) response.setHeader("Connection", "close");
});
process.on("SIGTERM", () => {
  draining = true;
  net.Server.prototype.close.call(shared);
  health.close();
  setTimeout(() => shared.closeIdleConnections(), 1000).unref();
});
'''

# kind: (file, source, first lines per commit, the app's command)
GUNICORN = f"{PYTHON} -m gunicorn -w 2 --graceful-timeout 5"
APPS = {
    "flask": ("app.py", FLASK, ('GREETING, HEALTHY = "hello", True\n',
                                'GREETING, HEALTHY = "hello again", True\n',
                                'GREETING, HEALTHY = "hello again", False\n'),
              f"{GUNICORN} app:app"),
    # uvicorn's shutdown, alone or as gunicorn's worker class, closes connections it accepted
    # but has not read yet and idle keep-alive ones (uvicorn/server.py, Server.shutdown):
    # a client sending on one just then gets no answer (tests/rollout/test_any_app.py).
    "asgi": ("asgi.py", ASGI, ('GREETING, HEALTHY = "hello", True\n',
                               'GREETING, HEALTHY = "hello again", True\n',
                               'GREETING, HEALTHY = "hello again", False\n'),
             f"{GUNICORN} -k uvicorn.workers.UvicornWorker asgi:app"),
    "node": ("server.js", NODE, ('const GREETING = "hello", HEALTHY = true;\n',
                                 'const GREETING = "hello again", HEALTHY = true;\n',
                                 'const GREETING = "hello again", HEALTHY = false;\n'),
             "node server.js {port}"),
}

CONFIG = """\
version: 1
pipelines:
  web:
    region: local
    repo: {{name: {repo_name}}}
    build: {{type: git, repo: "{repo}", command: "true", store: {{type: local, path: "{slugs}"}}}}
    app:
      command: "{command}"
      health: {{path: /healthz, timeout: 15s}}
    gates: [{{type: boot}}]
    preprod: {{fleet: {{driver: local, hosts: 1, workers: 1, root: "{root}/preprod"}}}}
    fleet: {{driver: local, hosts: 2, workers: 2, base_port: {port}, root: "{root}/fleet"}}
    rollout: {{stagger: 5s, drain_timeout: 5s}}
    heartbeat:
      source: {{type: sim, rate_per_min: 1000, noise: 0.02}}
      window: 10s
      watch: 60s
      metrics:
        - {{name: messages_created, query: "messages.created",
           baseline: {{kind: trailing, window: 120s}}, min_ratio: 0.5, windows: 2}}
    notify: {{console: false}}
"""


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Path]:
    """The root of the fleets `ship serve` starts; every agent stopped after the test."""
    root = tmp_path / "hosts"
    yield root
    for fleet in ("fleet", "preprod"):
        stop_agents(root / fleet)


def release_of(serving: Serving, sha: str) -> Release | None:
    return next((r for r in serving.store.releases(PIPELINE) if r.sha == sha), None)


def shipped(serving: Serving, sha: str) -> Release:
    """Wait until the release of `sha` is live and every host serves it (converged)."""
    def converged() -> Release | None:
        release = release_of(serving, sha)
        if release is None:
            return None
        assert release.state not in (State.HALTED, State.FAILED), (
            f"{release.name} {release.state}: {release.reason}\n"
            + "\n".join(g.output_tail for g in serving.store.gate_results(release.id)))
        rollouts = serving.store.rollouts(release.id)
        done = release.state in (State.LIVE, State.WATCHING, State.DONE)
        return release if done and rollouts and rollouts[-1].converged == 2 else None
    return wait_for(converged, f"{sha[:7]} live on every host", DEADLINE)


def settled(serving: Serving, sha: str) -> Release:
    def halted() -> Release | None:
        release = release_of(serving, sha)
        return release if release and release.state in (State.HALTED, State.FAILED) else None
    return wait_for(halted, f"{sha[:7]} halted", DEADLINE)


@pytest.mark.parametrize("kind", ["flask", "asgi", "node"])
def test_a_git_repo_ships_through_serve_with_no_failed_request(
        tmp_path: Path, prefect_api: str, hosts: Path, kind: str) -> None:
    name, source, heads, command = APPS[kind]
    repo = Repo(tmp_path / "repo")
    shas = [repo.commit({name: head + source}, f"commit {n}") for n, head in
            enumerate(heads, 1)]
    port = _free_base_port(2)
    config = CONFIG.format(repo_name=REPO_NAME, repo=repo.path, slugs=tmp_path / "slugs",
                           command=command, root=hosts, port=port)
    urls = [f"http://127.0.0.1:{port + i}" for i in range(2)]
    serving = Serving(tmp_path, prefect_api, config)
    try:
        _ship_three_commits(serving, urls, shas, kind)
    finally:
        serving.stop()


def _ship_three_commits(serving: Serving, urls: list[str], shas: list[str], kind: str) -> None:
    first, second, broken = shas
    assert serving.github(push([first], repo=REPO_NAME)).status_code in (200, 202)
    shipped(serving, first)
    with Load(urls, clients=4, rate=10.0) as load:
        wait_for(lambda: len(load.outcomes) > 20, "steady load")
        told_second = time.monotonic()
        assert serving.github(push([second], repo=REPO_NAME)).status_code in (200, 202)
        shipped(serving, second)
        converged = time.monotonic()
        assert serving.github(push([broken], repo=REPO_NAME)).status_code in (200, 202)
        halted = settled(serving, broken)
        wait_for(lambda: len(load.between(time.monotonic() - 1.0)) > 5, "load after the halt")

    if kind == "asgi":  # only what uvicorn's own shutdown drops (see APPS)
        assert all("RemoteDisconnected" in (o.error or "") for o in load.failures()), \
            load.failures()[:5]
    else:
        assert load.failures() == [], load.failures()[:5]
    assert {o.release for o in load.between(0, told_second)} == {first}
    assert {o.release for o in load.outcomes} <= {first, second}
    after = load.between(converged)
    assert {(o.release, o.body) for o in after} == {(second, f"hello again from {second}")}
    assert (halted.state, halted.halted_by) == (State.HALTED, "gate"), halted.reason
    assert halted.reason.startswith("boot: ") and "\n" not in halted.reason, halted.reason
    assert "answer 200" in halted.reason, halted.reason
    boot = [g for g in serving.store.gate_results(halted.id) if g.gate == "boot"]
    assert [g.passed for g in boot] == [False]
    # It never reached pre-prod: halted before its deploy, the fleet never told of it.
    assert serving.store.rollouts(halted.id) == []
