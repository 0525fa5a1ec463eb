"""The host agent: keeps releases on disk and restarts the host's workers one at a time.

    python -m rollout.agent --root DIR --port PORT --workers K [--stagger S] [--drain-timeout S]
                            [--keep N] [--boot-timeout S] [--name NAME] [--exit-with-parent]
    python -m rollout.agent deploy --release us#12 --slug URI [--stagger S] [--root DIR]

(`ship agent …` runs the same.) The first runs the agent; `deploy` tells the agent of this host
which release it wants (file:// slugs as they are, s3:// ones downloaded once unless the
release is kept) and waits until the host converged (exit 0) or failed (exit 1).

Host layout (Capistrano's), all under --root:

    releases/<number>-<slug id>/   unpacked slugs, the last --keep activated ones kept
    current -> releases/…          swapped atomically (symlink to a temporary name, os.replace)
    desired.json                   what the fleet driver wants (written atomically, polled)
    status.json                    what this agent reports (written atomically on every change)
    counters                       the host's messages_created, shared by its workers
    run/agent.json                 this agent: pid, process start time, port (see running_agent)
    run/workers.json               the workers this agent started, to adopt after a crash
    log/workers.log                the workers' output
    slugs/                         slugs `deploy` downloaded from S3

The agent owns one socket on 127.0.0.1:PORT shared by its K workers, so that no connection is
refused while workers change. It listens only while it has a worker: a host with none (a new
host waiting out its stagger, or one whose only release crashed) refuses connections at once
rather than letting them hang in the backlog. A refused connection is what a load balancer
handles best: its health check fails fast, and it may retry any request, a POST too, on
another host, since the request was never sent (a 503 would have been).

For a new desired release it unpacks the slug (nothing to do for a kept release), waits a
random stagger in [0, stagger), swaps `current`, then for each worker: start a replacement on
the new release, wait until it answers its health check (an app's instance: and keeps
answering probes sent on several connections at once for a quarter of its boot time, 0.5 to
5 s, since its first answer may come from one of its processes while the others still boot),
then SIGTERM the old one (it stops
accepting and drains within the drain timeout; killed past it), next. A replacement that is not
healthy within the boot timeout stops the restart: `current` goes back, the host keeps serving
the old release and reports `failed` with the reason. The host never serves with fewer than K
healthy workers (K+1 for a moment), so a host of one worker has no gap either.

Killed with SIGKILL, the agent leaves its workers serving; started again, it adopts them (their
pids are in run/workers.json; on Linux, workers it had not recorded yet are found by their
command line) and receives the shared socket from one of them over a unix socket
(SCM_RIGHTS), then carries on converging on the desired release.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import io
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

INSTANCE = Path(__file__).resolve().with_name("instance.py")
POLL_S = 0.05
HEALTH_EVERY_S = 1.0
KILL_MARGIN_S = 2.0  # past the drain timeout, a worker that has not exited is killed
SETTLE_SHARE = 0.25  # an instance settles for this share of its boot time once it answers,
SETTLE_MIN_S = 0.5  # at least this long,
SETTLE_MAX_S = 5.0  # at most this long
SETTLE_EVERY_S = 0.1
WARM_CONNECTIONS = 4
EXIT_ABORTED = 3  # a worker's exit code when its drain cut requests short (examples/app)
PHASES = ("idle", "waiting", "restarting", "converged", "failed", "stopped")


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def write_json(path: Path, doc: Any) -> None:
    """Readers never see a half-written file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(doc, indent=1))
    os.replace(temporary, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def log(message: str) -> None:
    print(f"{now_iso()} agent {os.getpid()}: {message}", file=sys.stderr, flush=True)


class SlugError(Exception):
    pass


class BootFailed(Exception):
    pass


class Interrupted(Exception):
    """A new release was published, or the agent was told to stop: re-plan between steps."""


@dataclass(frozen=True)
class Desired:
    """desired.json: one publish of a release to the fleet."""

    publish: str
    release: int
    name: str
    sha: str
    slug_id: str
    slug_uri: str
    published_at: str
    stagger: float | None = None
    app: dict[str, Any] | None = None  # the app to run (AppSpec); None: the example app's


    @property
    def release_dir(self) -> str:
        return f"{self.release}-{self.slug_id}"

    @classmethod
    def load(cls, path: Path) -> Desired | None:
        doc = read_json(path)
        if not isinstance(doc, dict):
            return None
        try:
            return cls(**{f.name: doc[f.name] for f in fields(cls) if f.name in doc})
        except TypeError:
            return None

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))


@dataclass(frozen=True)
class AppSpec:
    """An unmodified app (the pipeline's `app:`): a command run on the shared socket (fd 3,
    systemd's LISTEN_FDS), healthy once GET `health_path` answers 200 on its private port
    (`{port}` in the command: the app binds it; else the agent passes it bound, as fd 4) or,
    with health_port "shared", on the host's port."""

    command: str
    health_path: str = "/healthz"
    health_timeout: float = 30.0
    health_port: str = "private"
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, doc: Any) -> AppSpec:
        """From desired.json's `app` ({command, health: {path, timeout, port}, env})."""
        try:
            health = doc.get("health") or {}
            spec = cls(doc["command"], str(health.get("path", "/healthz")),
                       float(health.get("timeout", 30.0)), str(health.get("port", "private")),
                       {str(k): str(v) for k, v in (doc.get("env") or {}).items()})
            spec.argv(0)
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"app spec is not valid: {error!r}") from None
        if spec.health_port not in ("private", "shared") or not spec.health_path.startswith("/"):
            raise ValueError("app spec is not valid: health.port is private or shared, "
                             "health.path starts with /")
        return spec

    def argv(self, port: int) -> list[str]:
        """The command's words (split as a shell would, nothing expanded), {port} filled."""
        words = [word.format(port=port) for word in shlex.split(self.command)]
        if not words:
            raise ValueError("the command is empty")
        return words

    @property
    def binds_port(self) -> bool:
        return any(name == "port" for _, name, _, _ in string.Formatter().parse(self.command))


def release_number(release_dir: str | None) -> int | None:
    head = (release_dir or "").split("-", 1)[0]
    return int(head) if head.isdigit() else None


class HostLayout:
    """releases/<id>/, the `current` symlink, and the agent's own files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.releases = root / "releases"
        self.current_link = root / "current"
        self.desired = root / "desired.json"
        self.status = root / "status.json"
        self.counters = root / "counters"
        self.run = root / "run"
        self.agent = self.run / "agent.json"
        self.workers = self.run / "workers.json"
        self.worker_log = root / "log" / "workers.log"
        self.apps = self.run / "apps"
        for directory in (self.releases, self.run, self.worker_log.parent, self.apps):
            directory.mkdir(parents=True, exist_ok=True)

    def handoff(self, port: int) -> str:
        """Where the worker with this health port hands the shared socket over."""
        if sys.platform == "linux":  # an abstract socket: no file, no 108-byte path limit
            return f"{self.handoff_prefix}{port}"
        return str(self.run / f"handoff-{port}.sock")

    @property
    def handoff_prefix(self) -> str:
        return f"@ship-handoff-{hashlib.sha256(str(self.root).encode()).hexdigest()[:16]}-"

    def current(self) -> str | None:
        with contextlib.suppress(OSError):
            return Path(os.readlink(self.current_link)).name
        return None

    def app_record(self, release_dir: str) -> Path:
        """How to run a release: the app spec it was published with, its name and sha."""
        return self.apps / f"{release_dir}.json"

    def launch_spec(self, release_dir: str) -> tuple[AppSpec | None, dict[str, str]]:
        """The app to run for a release (None: the example app) and its SHIP_* variables."""
        record = read_json(self.app_record(release_dir)) or {}
        spec = AppSpec.load(record["app"]) if record.get("app") else None
        return spec, {"SHIP_RELEASE": str(record.get("release", "")),
                      "SHIP_SHA": str(record.get("sha", ""))}

    def has(self, release_dir: str) -> bool:
        return (self.releases / release_dir).is_dir()

    def kept(self) -> list[str]:
        """Unpacked releases, most recently activated last."""
        found = [p for p in self.releases.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return [p.name for p in sorted(found, key=lambda p: (p.stat().st_mtime, p.name))]

    def unpack(self, desired: Desired) -> bool:
        """Unpack the slug unless the release is kept; True when it unpacked."""
        if self.has(desired.release_dir):
            return False
        data = _slug_bytes(desired)
        temporary = self.releases / f".{desired.release_dir}.{os.getpid()}.tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                tar.extractall(temporary, filter="data")
        except (tarfile.TarError, OSError) as error:
            shutil.rmtree(temporary, ignore_errors=True)
            raise SlugError(f"cannot unpack slug {desired.slug_id}: {error}") from None
        if desired.app is None and not (temporary / "app.py").is_file():
            shutil.rmtree(temporary, ignore_errors=True)
            raise SlugError(f"slug {desired.slug_id} has no app.py")
        os.rename(temporary, self.releases / desired.release_dir)
        return True

    def activate(self, release_dir: str) -> None:
        """Point `current` at a release in one step: readers see the old or the new link."""
        os.utime(self.releases / release_dir)  # activation order decides what is pruned
        temporary = self.root / f".current.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        temporary.symlink_to(Path("releases") / release_dir)
        os.replace(temporary, self.current_link)

    def prune(self, keep: int, protect: set[str]) -> list[str]:
        kept = self.kept()
        removed = [name for name in kept[:-keep] if name not in protect]
        for name in removed:
            shutil.rmtree(self.releases / name, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                self.app_record(name).unlink()
        return removed


def _slug_bytes(desired: Desired) -> bytes:
    url = urlsplit(desired.slug_uri)
    if url.scheme != "file":
        raise SlugError(f"slug uri {desired.slug_uri} is not a local file: the local fleet "
                        f"needs slugs from `build: {{type: tarball}}`")
    try:
        data = Path(url2pathname(url.path)).read_bytes()
    except OSError as error:
        raise SlugError(f"cannot read slug {desired.slug_uri}: {error}") from None
    actual = f"sha256-{hashlib.sha256(data).hexdigest()[:16]}"
    if actual != desired.slug_id:
        raise SlugError(f"slug {desired.slug_uri} is {actual}, not {desired.slug_id}")
    return data


def process_started(pid: int) -> int | None:
    """When the process started (clock ticks since boot, /proc/PID/stat field 22): with the
    pid, it tells a process from a later one that reused its pid. None: no such process, or
    no /proc."""
    try:
        fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields_[19]) if fields_[0] != "Z" else None


def running_agent(record_path: Path) -> dict[str, Any] | None:
    """The agent serving a host, from its run/agent.json (pid, start time, port, arguments),
    if that very process still runs; None when there is none."""
    record = read_json(record_path)
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return None
    started = process_started(record["pid"])
    if started is None and Path("/proc").is_dir():
        return None
    if started is None:  # no /proc here: the pid alone
        try:
            os.kill(record["pid"], 0)
        except OSError:
            return None
    elif started != record.get("started"):
        return None  # the pid was reused
    return record


class SharedSocket:
    """The host's port, shared by its workers. It listens only while a worker may accept:
    without one, connections are refused at once instead of waiting in the backlog."""

    def __init__(self, port: int, adopted: socket.socket | None = None) -> None:
        self.sock: socket.socket | None = adopted or _bound(port)
        self.listening = adopted is not None
        self.port: int = self.sock.getsockname()[1]

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def listen(self, patience: float) -> None:
        if self.sock is None:
            self.sock = _bound(self.port, patience)
        if not self.listening:
            self.sock.listen(512)
            self.listening = True

    def refuse(self) -> None:
        """Stop listening (a socket cannot un-listen: close it, bind the port again)."""
        if self.listening and self.sock is not None:
            self.sock.close()
            self.sock, self.listening = None, False
        if self.sock is None:
            # A draining worker may hold the old socket a moment longer: bind on a later step.
            with contextlib.suppress(OSError):
                self.sock = _bound(self.port)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def _bound(port: int, patience: float = 0.0) -> socket.socket:
    """A socket bound to 127.0.0.1:port that does not listen yet (connections refused)."""
    deadline = time.monotonic() + patience
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return sock
        except OSError:
            sock.close()
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.05)


@dataclass(eq=False)
class WorkerProcess:
    pid: int
    release_dir: str
    health_port: int
    handoff: str
    state: str = "booting"  # booting | serving | draining
    health_path: str = "/healthz"
    healthy: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _adopted_alive(self.pid, self.handoff)

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def record(self) -> dict[str, Any]:
        return {"pid": self.pid, "release_dir": self.release_dir, "health_port": self.health_port,
                "handoff": self.handoff, "state": self.state, "health_path": self.health_path}

    def report(self) -> dict[str, Any]:
        return {"pid": self.pid, "release": release_number(self.release_dir),
                "release_dir": self.release_dir, "state": self.state, "healthy": self.healthy}

    def signal(self, signum: int) -> None:
        """The whole process group (the worker leads its own): an app's master and its
        workers alike."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)


def _answers_200(connection: http.client.HTTPConnection) -> bool:
    try:
        response = connection.getresponse()
        response.read()
    except (OSError, http.client.HTTPException):
        return False
    return response.status == 200


def _adopted_alive(pid: int, marker: str) -> bool:
    """A worker we did not start (no waitpid): alive, not a zombie, and still ours."""
    proc = Path("/proc") / str(pid)
    if not proc.exists():
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc here: trust the pid
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
    except (OSError, IndexError):
        return False
    return state != "Z" and marker in cmdline


@dataclass
class Run:
    """Progress of this host towards one publish; persisted in status.json."""

    desired: Desired | None = None
    phase: str = "idle"
    stagger_until: float = 0.0
    unpacked: bool | None = None
    previous: str | None = None
    started_at: str | None = None
    first_healthy_at: str | None = None
    converged_at: str | None = None
    failed_at: str | None = None
    reason: str | None = None

    def report(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["desired"] = asdict(self.desired) if self.desired else None
        return doc

    @classmethod
    def restore(cls, doc: dict[str, Any], desired: Desired) -> Run:
        saved = {f.name: doc.get(f.name) for f in fields(cls) if f.name != "desired"}
        return cls(desired=desired, **saved)


def instance_command(spec: AppSpec, ship_env: Mapping[str, str], shared: int,
                     private: socket.socket, handoff: str,
                     base_env: Mapping[str, str] = os.environ,
                     ) -> tuple[list[str], dict[str, str], tuple[int, ...]]:
    """rollout/instance.py running the app's command: the shared socket at fd 3 and, unless
    the app binds `{port}` itself, the private one at fd 4. The environment is `base_env`
    (the agent's), the spec's `env`, SHIP_RELEASE, SHIP_SHA and PORT (the private port).
    Used by the agent and by the boot gate, which boots an app as a host would."""
    port = private.getsockname()[1]
    command = [sys.executable, str(INSTANCE), "--fd", str(shared), "--handoff", handoff]
    fds: tuple[int, ...] = (shared,)
    if spec.binds_port:
        private.close()  # free for the app to bind (a port another process may take first)
    else:
        command += ["--private-fd", str(private.fileno())]
        fds += (private.fileno(),)
    env = {**base_env, **spec.env, **ship_env, "PORT": str(port)}
    return [*command, "--", *spec.argv(port)], env, fds


class Agent:
    def __init__(self, options: argparse.Namespace) -> None:
        self.layout = HostLayout(Path(options.root).resolve())
        self.name: str = options.name or self.layout.root.name
        self.port: int = options.port
        self.wanted: int = options.workers
        self.stagger: float = options.stagger
        self.drain_timeout: float = options.drain_timeout
        self.idle_grace: float = min(options.idle_grace, options.drain_timeout)
        self.keep: int = options.keep
        self.boot_timeout: float = options.boot_timeout
        self.parent = os.getppid() if options.exit_with_parent else None
        self.listener: SharedSocket | None = None
        self.arguments: list[str] = options.arguments
        self.workers: list[WorkerProcess] = []
        self.draining: list[WorkerProcess] = []  # adopted while draining: only watched
        self.run = Run()
        self.drains = {"clean": 0, "aborted": 0, "killed": 0, "unknown": 0}
        self._stopping = False
        self._last_health = 0.0
        self._respawn_after = 0.0
        self._written: dict[str, Any] | None = None

    # --- life cycle ---------------------------------------------------------------------

    def serve(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        saved = read_json(self.layout.status)  # a killed agent's last word, before we write
        saved = saved if isinstance(saved, dict) else {}
        self._adopt()
        if not self.port and self.workers:  # --port 0 again: the port the workers listen on
            self.port = saved.get("port") or 0
        self.listener = self._shared_socket()
        self.port = self.listener.port
        log(f"host {self.name} on 127.0.0.1:{self.port}, {len(self.workers)} workers adopted")
        write_json(self.layout.agent, {"pid": os.getpid(), "started": process_started(
            os.getpid()), "port": self.port, "arguments": self.arguments})
        self._resume(saved)
        while not self._stopping:
            self._step()
            time.sleep(POLL_S)
        self._shutdown()
        return 0

    def _stop(self, *_: object) -> None:
        self._stopping = True

    def _step(self) -> None:
        if self.parent is not None and os.getppid() != self.parent:
            log("parent gone: stopping")
            self._stopping = True
            return
        desired = Desired.load(self.layout.desired)
        if desired and (self.run.desired is None or desired.publish != self.run.desired.publish):
            self._begin(desired)
        if self.run.phase == "waiting" and time.time() >= self.run.stagger_until:
            self.run.phase, self.run.started_at = "restarting", now_iso()
            self.run.previous = self.layout.current()
        if self.run.phase == "restarting":
            self._write_status()
            self._restart()
        self._supervise()
        self._write_status()

    def _shutdown(self) -> None:
        everyone = self.workers + self.draining
        for worker in everyone:
            worker.state = "draining"
            worker.signal(signal.SIGTERM)
        for worker in everyone:
            self._await_exit(worker)
        self.workers, self.draining = [], []
        self._save_workers()
        if self.listener:
            self.listener.close()
        self.run.phase = "stopped"
        self._write_status()
        with contextlib.suppress(FileNotFoundError):
            self.layout.agent.unlink()
        log("stopped")

    # --- the rolling restart --------------------------------------------------------------

    def _begin(self, desired: Desired) -> None:
        log(f"desired release {desired.name} ({desired.release_dir})")
        self.run = Run(desired=desired, phase="waiting")
        try:
            if desired.app is not None:
                AppSpec.load(desired.app)
            self.run.unpacked = self.layout.unpack(desired)
        except (SlugError, ValueError) as error:
            self._fail(str(error))
            return
        write_json(self.layout.app_record(desired.release_dir),
                   {"app": desired.app, "release": desired.name, "sha": desired.sha})
        if self._serving_only(desired.release_dir):
            at = now_iso()
            self.run = Run(desired=desired, phase="converged", unpacked=self.run.unpacked,
                           started_at=at, first_healthy_at=at, converged_at=at)
            self.layout.activate(desired.release_dir)
            return
        stagger = self.stagger if desired.stagger is None else desired.stagger
        self.run.stagger_until = time.time() + random.uniform(0, stagger)

    def _restart(self) -> None:
        assert self.run.desired is not None
        target = self.run.desired.release_dir
        self.layout.activate(target)
        try:
            self._converge(target)
        except Interrupted:
            return
        except BootFailed as error:
            self._revert(str(error))
            return
        self.run.phase, self.run.converged_at = "converged", now_iso()
        log(f"converged on {target}")
        self._prune()

    def _converge(self, target: str) -> None:
        """Fill up to K workers on the target, then replace the others one at a time with a
        surge: the replacement serves before the old worker drains, so even a host of one
        worker with a slow-booting app never has nobody accepting. Trim extras."""
        while len(self.workers) < self.wanted:
            self._check_interrupt()
            self._replace(target)
        for worker in [w for w in self.workers if w.release_dir != target]:
            self._check_interrupt()
            self._replace(target)
            self._retire(worker)
        for worker in self.workers[self.wanted:]:
            self._retire(worker)

    def _replace(self, release_dir: str) -> None:
        worker = self._spawn(release_dir)
        try:
            self._await_healthy(worker)
        except BootFailed:
            self._retire(worker)
            raise
        if self.run.desired and release_dir == self.run.desired.release_dir:
            self.run.first_healthy_at = self.run.first_healthy_at or now_iso()
        self._write_status()

    def _revert(self, reason: str) -> None:
        """The old workers keep serving; `current` goes back; capacity is restored if it can."""
        self._fail(reason)
        previous = self.run.previous
        if previous and self.layout.has(previous):
            self.layout.activate(previous)
            with contextlib.suppress(BootFailed):
                while len(self.workers) < self.wanted:
                    self._replace(previous)

    def _fail(self, reason: str) -> None:
        log(f"failed: {reason}")
        self.run.phase, self.run.failed_at, self.run.reason = "failed", now_iso(), reason
        self.run.started_at = self.run.started_at or self.run.failed_at

    def _check_interrupt(self) -> None:
        desired = Desired.load(self.layout.desired)
        assert self.run.desired is not None
        if self._stopping or (desired and desired.publish != self.run.desired.publish):
            raise Interrupted

    def _serving_only(self, release_dir: str) -> bool:
        return (len(self.workers) == self.wanted
                and all(w.release_dir == release_dir and w.state == "serving"
                        for w in self.workers))

    def _prune(self) -> None:
        protect = {w.release_dir for w in self.workers + self.draining}
        protect |= {name for name in (self.layout.current(), self.run.previous) if name}
        removed = self.layout.prune(self.keep, protect)
        if removed:
            log(f"pruned {', '.join(removed)}")

    # --- workers --------------------------------------------------------------------------

    def _spawn(self, release_dir: str) -> WorkerProcess:
        assert self.listener is not None
        self.listener.listen(patience=self.drain_timeout + KILL_MARGIN_S)
        spec, ship_env = self.layout.launch_spec(release_dir)
        private = socket.create_server(("127.0.0.1", 0))
        port = private.getsockname()[1]
        handoff = self.layout.handoff(port)
        release = self.layout.releases / release_dir
        shared = self.listener.fileno()
        if spec is None:  # the example app's own protocol
            command = [sys.executable, str(release / "app.py"), "--fd", str(shared),
                       "--health-fd", str(private.fileno()), "--handoff", handoff,
                       "--counters", str(self.layout.counters), "--drain-timeout",
                       str(self.drain_timeout), "--idle-grace", str(self.idle_grace)]
            env, fds = None, (shared, private.fileno())
        else:
            command, env, fds = instance_command(spec, ship_env, shared, private, handoff)
        with private, self.layout.worker_log.open("ab") as output:
            process = subprocess.Popen(
                command, cwd=release, stdin=subprocess.DEVNULL, stdout=output, env=env,
                stderr=subprocess.STDOUT, pass_fds=fds,
                start_new_session=True)  # a Ctrl-C to the agent's terminal is the agent's to handle
        worker = WorkerProcess(process.pid, release_dir, port, handoff, process=process)
        if spec is not None:
            worker.health_path = spec.health_path
            worker.health_port = self.port if spec.health_port == "shared" else port
        self.workers.append(worker)
        self._save_workers()
        log(f"started worker {worker.pid} on {release_dir}")
        return worker

    def _await_healthy(self, worker: WorkerProcess) -> None:
        spec, _ = self.layout.launch_spec(worker.release_dir)
        timeout = spec.health_timeout if spec else self.boot_timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not worker.alive():
                raise BootFailed(f"worker {worker.pid} of {worker.release_dir} exited with code "
                                 f"{worker.exit_code()} before it was healthy "
                                 f"(its output is in log/workers.log)")
            if all(self._healthy(worker)):
                log(f"worker {worker.pid} healthy")
                if spec is not None:
                    self._settle(worker, timeout - (deadline - time.monotonic()))
                worker.state, worker.healthy = "serving", True
                self._save_workers()
                return
            time.sleep(POLL_S)
        raise BootFailed(f"worker {worker.pid} of {worker.release_dir} was not healthy "
                         f"after {timeout:g}s")

    def _settle(self, worker: WorkerProcess, booted_in: float) -> None:
        """An app's first answer may come from one of its processes while the others still
        boot (gunicorn's workers each import the app): keep probing, with several
        connections at once so that each idle process answers one, for a share of the boot
        time before the instance counts as serving."""
        until = time.monotonic() + min(SETTLE_MAX_S, max(SETTLE_MIN_S,
                                                         SETTLE_SHARE * booted_in))
        while time.monotonic() < until:
            if not worker.alive() or not all(self._healthy(worker, WARM_CONNECTIONS)):
                raise BootFailed(f"worker {worker.pid} of {worker.release_dir} stopped "
                                 "answering its health check right after it first did")
            time.sleep(SETTLE_EVERY_S)
        log(f"worker {worker.pid} settled")

    @staticmethod
    def _healthy(worker: WorkerProcess, connections: int = 1) -> list[bool]:
        """GET the health path on `connections` connections at once: all are sent before
        any answer is read, so that as many idle processes take one each."""
        opened = [http.client.HTTPConnection("127.0.0.1", worker.health_port, timeout=1.0)
                  for _ in range(connections)]
        try:
            for connection in opened:
                connection.request("GET", worker.health_path)
            return [_answers_200(connection) for connection in opened]
        except (OSError, http.client.HTTPException):
            return [False]
        finally:
            for connection in opened:
                connection.close()

    def _retire(self, worker: WorkerProcess) -> None:
        """SIGTERM: the worker stops accepting and drains; killed only past the drain timeout."""
        was_running = worker.alive()  # a worker that crashed on boot had nothing to drain
        worker.state, worker.healthy = "draining", False
        self._save_workers()
        log(f"stopping worker {worker.pid}")
        worker.signal(signal.SIGTERM)
        self._await_exit(worker, counted=was_running)
        self.workers.remove(worker)
        self._save_workers()

    def _await_exit(self, worker: WorkerProcess, counted: bool = True) -> None:
        deadline = time.monotonic() + self.drain_timeout + KILL_MARGIN_S
        while worker.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if worker.alive():
            log(f"worker {worker.pid} still running after its drain timeout: killed")
            worker.signal(signal.SIGKILL)
            if worker.process is not None:
                worker.process.wait()
            self.drains["killed"] += 1
            return
        code = worker.exit_code()
        outcome = self._outcomes(worker).get(code, "unknown")  # type: ignore[arg-type]
        if counted:
            self.drains[outcome] += 1
        log(f"worker {worker.pid} exited with code {code} ({outcome})")

    def _outcomes(self, worker: WorkerProcess) -> dict[int, str]:
        """What a worker's exit code says of its drain. An app may also end by the SIGTERM
        it was sent (Node without a handler; uvicorn raises it again once shut down)."""
        if self.layout.launch_spec(worker.release_dir)[0] is None:
            return {0: "clean", EXIT_ABORTED: "aborted"}
        return {0: "clean", 128 + signal.SIGTERM: "clean"}

    def _supervise(self) -> None:
        """Forget dead workers, refresh health, and keep K workers on `current`."""
        self.draining = [w for w in self.draining if w.alive()]
        dead = [w for w in self.workers if not w.alive()]
        for worker in dead:
            log(f"worker {worker.pid} died with code {worker.exit_code()}")
            self.workers.remove(worker)
        if dead:
            self._save_workers()
        if not self.workers and self.listener:
            self.listener.refuse()
        if time.monotonic() - self._last_health >= HEALTH_EVERY_S:
            self._last_health = time.monotonic()
            for worker in self.workers:
                worker.healthy = all(self._healthy(worker))
        current = self.layout.current()
        if (current and self.layout.has(current) and len(self.workers) < self.wanted
                and self.run.phase != "restarting" and time.monotonic() >= self._respawn_after):
            try:
                self._replace(current)
            except BootFailed as error:
                log(f"cannot restore a worker: {error}")
                self._respawn_after = time.monotonic() + 1.0

    # --- crash recovery -------------------------------------------------------------------

    def _adopt(self) -> None:
        """Take over the workers a killed agent left serving."""
        for worker in live_workers(self.layout):
            if worker.state == "draining":
                # Recorded as draining before it was signalled: the killed agent may never
                # have told it. A second SIGTERM is harmless.
                worker.signal(signal.SIGTERM)
            (self.draining if worker.state == "draining" else self.workers).append(worker)
        self._save_workers()

    def _shared_socket(self) -> SharedSocket:
        """The socket adopted workers accept on, or a new one when none is left."""
        deadline = time.monotonic() + self.boot_timeout + 1.0
        while True:
            for worker in self.workers:
                received = _receive_socket(worker.handoff)
                if received:
                    return SharedSocket(self.port, adopted=received)
            try:
                return SharedSocket(self.port)
            except OSError:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.1)  # an adopted worker may still be booting

    def _resume(self, saved: dict[str, Any]) -> None:
        """Carry on with the publish a killed agent was working on."""
        desired = Desired.load(self.layout.desired)
        if isinstance(saved.get("drains"), dict):
            self.drains.update(saved["drains"])
        if desired and saved.get("publish") == desired.publish:
            self.run = Run.restore(saved.get("run") or {}, desired)
            log(f"resuming {self.run.phase} towards {desired.release_dir}")
        for worker in [w for w in self.workers if w.state == "booting"]:
            try:
                self._await_healthy(worker)
            except BootFailed as error:
                log(str(error))
                self._retire(worker)

    def _save_workers(self) -> None:
        write_json(self.layout.workers, [w.record() for w in self.workers + self.draining])
        self._write_status()

    # --- status ---------------------------------------------------------------------------

    def _write_status(self) -> None:
        desired = self.run.desired
        doc = {
            "host": self.name, "pid": os.getpid(), "port": self.port, "phase": self.run.phase,
            "publish": desired.publish if desired else None,
            "desired": desired.release if desired else None,
            "current": self.layout.current(), "current_release": release_number(
                self.layout.current()),
            "workers": [w.report() for w in self.workers],
            "draining": len(self.draining) + sum(w.state == "draining" for w in self.workers),
            "started_at": self.run.started_at, "first_healthy_at": self.run.first_healthy_at,
            "converged_at": self.run.converged_at, "failed_at": self.run.failed_at,
            "reason": self.run.reason, "unpacked": self.run.unpacked,
            "drains": dict(self.drains), "releases": self.layout.kept(), "run": self.run.report(),
        }
        if doc != self._written:
            self._written = doc
            write_json(self.layout.status, {**doc, "updated_at": now_iso()})


def live_workers(layout: HostLayout) -> list[WorkerProcess]:
    """The host's running workers: those run/workers.json records, and any a killed agent
    started but had not recorded yet."""
    recorded = [WorkerProcess(r["pid"], r["release_dir"], r["health_port"], r["handoff"],
                              r["state"], r.get("health_path", "/healthz"))
                for r in read_json(layout.workers) or []]
    found = [w for w in recorded if w.alive()]
    return found + _unrecorded_workers(layout, {w.pid for w in recorded})


def _unrecorded_workers(layout: HostLayout, known: set[int]) -> list[WorkerProcess]:
    """Processes whose command line names this host's handoff socket (Linux only); each
    runs in its release's directory."""
    prefix = layout.handoff_prefix
    if not layout.handoff(0).startswith(prefix):
        return []
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        handoff = next((a for a in args if a.startswith(prefix)), None)
        if not handoff or int(proc.name) in known:
            continue
        with contextlib.suppress(OSError):
            release = Path(os.readlink(proc / "cwd"))
            if release.parent == layout.releases:
                found.append(_found_worker(layout, int(proc.name), release.name, handoff))
    return [w for w in found if w.alive()]


def _found_worker(layout: HostLayout, pid: int, release_dir: str, handoff: str,
                  ) -> WorkerProcess:
    port = int(handoff[len(layout.handoff_prefix):])
    spec, _ = layout.launch_spec(release_dir)
    if spec is None:
        return WorkerProcess(pid, release_dir, port, handoff)
    # The shared port's number is not known here: the agent's status.json had it.
    shared = (read_json(layout.status) or {}).get("port") or port
    return WorkerProcess(pid, release_dir, shared if spec.health_port == "shared" else port,
                         handoff, health_path=spec.health_path)


def _receive_socket(address: str) -> socket.socket | None:
    """The shared socket, from a worker serving it (SCM_RIGHTS)."""
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
            channel.settimeout(1.0)
            channel.connect(address)
            _, fds, _, _ = socket.recv_fds(channel, 16, 1)
    except OSError:
        return None
    return socket.socket(fileno=fds[0]) if fds else None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ship agent", description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the host's directory")
    parser.add_argument("--port", type=int, required=True, help="shared port; 0 picks one")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (K)")
    parser.add_argument("--name", help="host name in reports (default: the root's name)")
    parser.add_argument("--stagger", type=float, default=0.0,
                        help="random delay in [0, S) before a restart, unless desired.json says")
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--idle-grace", type=float, default=1.0,
                        help="during a drain, keep-alive connections idle this long are closed")
    parser.add_argument("--keep", type=int, default=5, help="releases kept for rollback")
    parser.add_argument("--boot-timeout", type=float, default=30.0,
                        help="a replacement not healthy by then fails the restart")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="stop (draining the workers) when the parent process goes away")
    options = parser.parse_args(argv)
    if options.workers < 1 or options.keep < 1:
        parser.error("--workers and --keep must be at least 1")
    options.arguments = list(argv)
    return options


# --- `ship agent deploy`: tell the running agent of this host, and wait -------------------

DEFAULT_ROOT = os.environ.get("SHIP_AGENT_ROOT", "/var/lib/ship")
SLUG_NAME = re.compile(r"sha256-(?P<id>[0-9a-f]{16})|(?P<digest>[0-9a-f]{64})")


def deploy(argv: list[str]) -> int:
    """Publish a release to the agent serving --root, then wait until it converged (0) or
    failed (1). What a fleet's remote command runs on each host (e.g. through SSM)."""
    options = parse_deploy_args(argv)
    root = Path(options.root).resolve()
    if not _agent_running(root):
        print(f"deploy: no agent is running at {root} (start `ship agent --root {root} …`)",
              file=sys.stderr)
        return 1
    layout = HostLayout(root)
    number = options.number if options.number is not None else _number_of(options.release)
    slug_id = options.slug_id or _slug_id_of(options.slug)
    if number is None or slug_id is None:
        print("deploy: give --number and --slug-id: the release name or the slug's name "
              "does not say them", file=sys.stderr)
        return 2
    try:
        app = json.loads(options.app) if options.app else None
        if app is not None:
            AppSpec.load(app)
    except ValueError as error:
        print(f"deploy: --app: {error}", file=sys.stderr)
        return 2
    desired = Desired(uuid.uuid4().hex, number, options.release, options.sha, slug_id, "",
                      now_iso(), options.stagger, app)
    try:
        uri = _local_slug(options.slug, layout, desired)
    except SlugError as error:
        print(f"deploy: {error}", file=sys.stderr)
        return 1
    replace(desired, slug_uri=uri).save(layout.desired)
    return 0 if options.no_wait else _await_outcome(layout, desired.publish, options.timeout)


def _agent_running(root: Path) -> bool:
    return running_agent(root / "run" / "agent.json") is not None


def _number_of(release: str) -> int | None:
    tail = release.rsplit("#", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _slug_id_of(uri: str) -> str | None:
    """Slugs are stored under their id (S3) or their full digest (a tarball store)."""
    found = SLUG_NAME.match(urlsplit(uri).path.rsplit("/", 1)[-1])
    return f"sha256-{(found['id'] or found['digest'])[:16]}" if found else None


def _local_slug(uri: str, layout: HostLayout, desired: Desired) -> str:
    """A file URI for the slug: as given, or downloaded from S3 once (a kept release, none)."""
    url = urlsplit(uri)
    if url.scheme == "file" or layout.has(desired.release_dir):
        return uri
    if url.scheme != "s3":
        raise SlugError(f"cannot fetch slug {uri}: use a file:// or s3:// URI")
    path = layout.root / "slugs" / url.path.rsplit("/", 1)[-1]
    if not path.exists():
        import boto3  # only hosts fetching from S3 need it (AWS_ENDPOINT_URL, the usual chain)
        from botocore.exceptions import BotoCoreError, ClientError

        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            boto3.client("s3").download_file(url.netloc, url.path.lstrip("/"), str(temporary))
        except (BotoCoreError, ClientError) as error:
            raise SlugError(f"cannot download slug {uri}: {error}") from None
        os.replace(temporary, path)
    return path.as_uri()


def _await_outcome(layout: HostLayout, publish: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_json(layout.status) or {}
        if status.get("publish") == publish and status.get("phase") in ("converged", "failed"):
            print(f"{status['host']}: {status['phase']}"
                  + (f": {status['reason']}" if status.get("reason") else ""))
            return 0 if status["phase"] == "converged" else 1
        if not _agent_running(layout.root):
            print(f"deploy: the agent at {layout.root} stopped", file=sys.stderr)
            return 1
        time.sleep(0.1)
    print(f"deploy: no outcome from the agent at {layout.root} after {timeout:g}s "
          "(is `ship agent` running there?)", file=sys.stderr)
    return 1


def parse_deploy_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ship agent deploy", description=deploy.__doc__)
    parser.add_argument("--release", required=True, help="the release's name, e.g. us#12")
    parser.add_argument("--slug", required=True, help="file:// or s3:// URI of the slug")
    parser.add_argument("--slug-id", help="default: from the slug's file name")
    parser.add_argument("--number", type=int, help="default: from the release name's #N")
    parser.add_argument("--sha", default="")
    parser.add_argument("--stagger", type=float, help="default: the agent's own --stagger")
    parser.add_argument("--root", default=DEFAULT_ROOT, help="default: $SHIP_AGENT_ROOT or "
                                                             "/var/lib/ship")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--no-wait", action="store_true", help="publish and return at once")
    parser.add_argument("--app", help="the app to run, as JSON ({command, health: {path, "
                        "timeout, port}, env}); default: the example app's protocol")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    if argv[:1] == ["deploy"]:
        return deploy(argv[1:])
    return Agent(parse_args(argv)).serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
