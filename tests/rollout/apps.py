"""Unmodified apps, as a team would write them, for the agent to run: a Flask app under
gunicorn, an ASGI app under uvicorn, a Node `http` server. Each answers every path with the
release it runs (SHIP_RELEASE, in the body and in X-Release) and GET /healthz with 200."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from orchestrator.tarball import TarballBuildConfig, TarballBuilder
from shiptypes import ProviderContext, ReleaseRef

FLASK_APP = '''\
import os
import sys
import time

from flask import Flask, request

time.sleep(float(os.environ.get("BOOT_SECONDS", "0")))  # a slow import: models, caches
RELEASE = os.environ["SHIP_RELEASE"]
HEALTHY = os.environ.get("HEALTHY", "yes")  # yes | no | once (then never again)
app = Flask(__name__)
asked = []
print(f"ready {RELEASE} {os.getpid()} at {time.time():.3f}", file=sys.stderr, flush=True)


@app.get("/healthz")
def healthz():
    asked.append(1)
    healthy = HEALTHY == "yes" or (HEALTHY == "once" and len(asked) == 1)
    return ("ok", 200) if healthy else ("not ready", 503)


@app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
@app.route("/<path:path>", methods=["GET", "POST"])
def answer(path):
    request.get_data()
    return RELEASE, 200, {"X-Release": RELEASE}
'''

ASGI_APP = '''\
import os

RELEASE = os.environ["SHIP_RELEASE"].encode()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"x-release", RELEASE), (b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": RELEASE})
'''

NODE_APP = '''\
const http = require("http");
const net = require("net");
const release = process.env.SHIP_RELEASE;
let draining = false;
function answer(request, response) {
  request.resume();
  request.on("end", () => {
    response.setHeader("X-Release", release);
    if (draining) response.setHeader("Connection", "close");
    response.end(request.url === "/healthz" ? "ok" : release);
  });
}
const shared = http.createServer(answer);
const health = http.createServer(answer);
shared.listen({fd: 3});
health.listen(Number(process.argv[2]), "127.0.0.1");
// Stop accepting, answer what comes on open connections with Connection: close, then close
// those left idle. Not http's close(): it drops idle keep-alive connections at once, and a
// client sending on one just then gets no answer.
process.on("SIGTERM", () => {
  draining = true;
  net.Server.prototype.close.call(shared);
  health.close();
  setTimeout(() => shared.closeIdleConnections(), 1000).unref();
});
'''

PYTHON = sys.executable


def gunicorn(workers: int, **env: str) -> dict[str, object]:
    """The spec of a Flask app under gunicorn, health on the private socket (fd 4)."""
    return {"command": f"{PYTHON} -m gunicorn -w {workers} --graceful-timeout 5 app:app",
            "health": {"path": "/healthz", "timeout": 20.0}, "env": env}


def gunicorn_asgi(workers: int) -> dict[str, object]:
    """An ASGI app under gunicorn with uvicorn's worker class: health on the private socket."""
    return {"command": f"{PYTHON} -m gunicorn -w {workers} -k uvicorn.workers.UvicornWorker "
                       "--graceful-timeout 5 asgi:app",
            "health": {"path": "/healthz", "timeout": 20.0}}


def uvicorn() -> dict[str, object]:
    """uvicorn serves one socket (`--fd 3`): its health is asked on the host's port."""
    return {"command": f"{PYTHON} -m uvicorn --fd 3 --timeout-graceful-shutdown 5 asgi:app",
            "health": {"path": "/healthz", "timeout": 20.0, "port": "shared"}}


def node() -> dict[str, object]:
    """A Node server that binds its private port itself ({port})."""
    return {"command": "node server.js {port}", "health": {"path": "/healthz", "timeout": 20.0}}


SOURCES = {"flask": {"app.py": FLASK_APP}, "asgi": {"asgi.py": ASGI_APP},
           "node": {"server.js": NODE_APP}}


def app_release(tmp_path: Path, context: ProviderContext, kind: str, number: int) -> ReleaseRef:
    """Release `number` of an app, its slug built by the tarball build from a source dir."""
    source = tmp_path / f"{kind}-src"
    source.mkdir(exist_ok=True)
    for name, text in SOURCES[kind].items():
        (source / name).write_text(text)
    config = TarballBuildConfig(type="tarball", source=str(source),
                                store=str(tmp_path / "slugs"))
    ref = ReleaseRef(id=number, pipeline="test", number=number, sha=f"{number:040x}")
    return replace(ref, slug=TarballBuilder(config, context).build(ref))
