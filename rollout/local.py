"""A real fleet on this machine: N host agents (rollout/agent.py) as processes on 127.0.0.1,
each running K workers on one shared socket: the pipeline's `app:` (an unmodified app,
rollout/instance.py) or, without one, the example app (examples/app).

publish() writes desired.json into every host's root at once and returns; each agent staggers
and restarts on its own. observe() reads every host's status.json: O(hosts) small reads.
Durations: the stagger is pipeline time (divided by the clock's speed); the drain timeout and
the boot timeout bound real requests and real processes, so they are real seconds.

Hosts are hosts: with `agents: start` the agents run in sessions of their own and outlive the
ship process that started them (killed, or stopped by `ship serve`'s SIGTERM), as real hosts
outlive their orchestrator. The next driver on the same root adopts the running ones (each
agent's run/agent.json names its pid, process start time and port) and starts only those that
are gone, remembering them for reconcile (check_hosts). close() or stop_agents(root) stops
them.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from rollout.agent import (
    Desired,
    HostLayout,
    live_workers,
    now_iso,
    process_started,
    read_json,
    running_agent,
)
from rollout.sim import quantile
from shiptypes import (
    FleetStatus,
    HostFailure,
    ProviderConfig,
    ProviderContext,
    ReleaseRef,
    RolloutSettings,
    Seconds,
    utcnow,
)

# Run as a script rather than `-m rollout.agent`: the agent needs only the standard library,
# and the package's __init__ would import every driver (boto3 alone costs half a second).
AGENT = Path(__file__).resolve().with_name("agent.py")
START_TIMEOUT_S = 20.0
PROBE_TIMEOUT_S = 2.0


class LocalFleetConfig(ProviderConfig):
    driver: Literal["local"]
    hosts: int = Field(2, ge=1, le=64)
    workers: int = Field(2, ge=1, le=32, description="processes per host, restarted one at a time")
    base_port: int = Field(0, ge=0, le=65535,
                           description="host i listens on base_port + i; 0 picks free ports")
    root: str | None = Field(None, description="directory of the hosts' roots; default: "
                                               "fleet/<pipeline> under the state dir")
    boot_timeout: Seconds = Field(30.0, gt=0, description="a replacement worker not healthy "
                                                          "by then fails its host (real seconds)")
    idle_grace: Seconds = Field(1.0, ge=0, description="a draining worker closes keep-alive "
                                                       "connections idle this long")
    agents: Literal["start", "attach"] = Field(
        "start", description="start: this process starts the hosts' agents that are not "
        "running yet and adopts those that are; they outlive it, as real hosts outlive their "
        "orchestrator; attach: the agents run on their own at `root` (`ship agent`, e.g. "
        "under systemd) and are never started here")
    _preprod_slot: int | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _attach_needs_root(self) -> LocalFleetConfig:
        if self.agents == "attach" and not self.root:
            raise ValueError("agents: attach needs the `root` the agents run in")
        return self

    def for_slot(self, slot: int) -> LocalFleetConfig:
        """The pre-prod of release slot `slot` (`train.in_flight`): hosts of its own at
        `<root>-<slot>` (where attached agents must run), on ports after the slots before."""
        copy = self if not slot else self.model_copy(update={
            "root": f"{self.root}-{slot}" if self.root else None,
            "base_port": self.base_port + slot * self.hosts if self.base_port else 0})
        copy = copy.model_copy()
        copy._preprod_slot = slot  # its default root is its own
        return copy

    def default_root(self, context: ProviderContext) -> Path:
        """The same for every ship process of a pipeline, so that the next one finds the
        hosts the last one started."""
        name = context.pipeline
        if self._preprod_slot is not None:
            name += f"-preprod-{self._preprod_slot}"
        return context.state_dir / "fleet" / name


@dataclass
class _Host:
    name: str
    layout: HostLayout
    port: int
    process: subprocess.Popen[bytes] | None = None  # the agent, when this process started it


class LocalFleet:
    """Implements FleetDriver for `driver: local`."""

    def __init__(self, config: LocalFleetConfig, rollout: RolloutSettings,
                 context: ProviderContext) -> None:
        self.config = config
        self.rollout = rollout
        self._clock = context.clock
        self._speed = float(getattr(context.clock, "speed", 1.0))
        self.root = Path(config.root) if config.root else config.default_root(context)
        self.hosts = [
            _Host(f"host-{i}", HostLayout(self.root.resolve() / f"host-{i}"),
                  config.base_port + i if config.base_port else 0)
            for i in range(config.hosts)
        ]
        # Hosts found without their agent when this driver started: for reconcile to report.
        self.revived: list[HostFailure] = []
        # What the fleet was last told, by this process or one before it (a restarted
        # orchestrator goes on observing the same publish).
        self._published: Desired | None = Desired.load(self.hosts[0].layout.desired)
        if config.agents == "attach":
            self._attach()
            return
        try:
            self._start_missing()
        except BaseException:
            self.close()
            raise

    @property
    def host_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{host.port}" for host in self.hosts]

    # --- FleetDriver ----------------------------------------------------------------------

    def publish(self, release: ReleaseRef) -> None:
        slug = release.slug
        desired = Desired(
            publish=uuid.uuid4().hex, release=release.number, name=release.name,
            sha=release.sha, slug_id=slug.id if slug else "", slug_uri=slug.uri if slug else "",
            published_at=now_iso(), stagger=self.rollout.stagger / self._speed,
            app=self.rollout.app)
        for host in self.hosts:
            desired.save(host.layout.desired)
        self._published = desired

    def observe(self) -> FleetStatus:
        desired, hosts = self._published, len(self.hosts)
        if desired is None:
            return FleetStatus(release=None, hosts=hosts, started=0, converged=0, failed=0)
        to_pipeline = self._pipeline_time_converter()
        reports = [self._report(host, desired) for host in self.hosts]
        started = [r for r in reports if r["phase"] in ("restarting", "converged")]
        converged = sorted(to_pipeline(r["converged_at"]) for r in reports
                           if r["phase"] == "converged")
        failed = [r for r in reports if r["phase"] == "failed"]
        firsts = [to_pipeline(r["first_healthy_at"]) for r in reports if r.get("first_healthy_at")]
        all_started = len(started) + len(failed) >= hosts
        done = len(converged) + len(failed) >= hosts
        ends = converged + [to_pipeline(r.get("failed_at")) for r in failed]
        return FleetStatus(
            release=desired.release,
            hosts=hosts,
            started=len(started),
            converged=len(converged),
            failed=len(failed),
            failures=tuple(HostFailure(r["host"], r.get("reason") or "failed") for r in failed),
            first_request_at=min(firsts, default=None),
            all_started_at=max((to_pipeline(r.get("started_at")) for r in started + failed),
                               default=None) if all_started else None,
            converged_at=max(ends) if done and ends else None,
            half_at=quantile(converged, 0.5, hosts),
            p95_at=quantile(converged, 0.95, hosts),
        )

    # --- hosts ----------------------------------------------------------------------------

    def statuses(self) -> list[dict[str, Any]]:
        """Every agent's status.json as it stands ({} before the first one)."""
        return [read_json(host.layout.status) or {} for host in self.hosts]

    def agent_pids(self) -> list[int | None]:
        """The pid of each host's running agent (None: not running)."""
        return [(running_agent(h.layout.agent) or {}).get("pid") for h in self.hosts]

    def check_hosts(self) -> list[HostFailure]:
        """Hosts that are down or were: found without their agent when this driver started
        (and with `agents: start`, started again), or not answering on their port now."""
        found = {failure.host: failure.reason for failure in self.revived}
        with ThreadPoolExecutor(8) as pool:  # a host that hangs costs its probe's timeout
            downs = list(pool.map(self._down, self.hosts))
        for host, now in zip(self.hosts, downs, strict=True):
            if now:
                found[host.name] = f"{found[host.name]}; {now}" if host.name in found else now
        return [HostFailure(name, reason) for name, reason in found.items()]

    def kill_host(self, index: int) -> None:
        """SIGKILL a host's agent (its workers keep serving), as a crash would."""
        process, pid = self.hosts[index].process, self.agent_pids()[index]
        if pid is not None:
            _kill_and_await(pid, process if process and process.pid == pid else None)

    def start_host(self, index: int) -> None:
        """Start a host's agent again; it adopts the workers it left and carries on."""
        self._launch(index)
        self._await_agent(index)

    def close(self) -> None:
        """Stop the hosts: every agent (each drains its workers), then any worker a killed
        agent left. The root stays (releases, logs): agents started on it again serve its
        `current` release. Attached agents are not this process's to stop."""
        if self.config.agents == "attach":
            return
        stop_agents(self.root, self.rollout.drain_timeout + self.config.boot_timeout + 5.0,
                    [h.layout for h in self.hosts])
        self.detach()

    def detach(self) -> None:
        """Let go of the agents this process started, leaving them serving (what `ship
        serve` does when it stops: the hosts outlive it)."""
        for host in self.hosts:
            if host.process is not None and host.process.poll() is not None:
                host.process.wait()
            host.process = None

    def __enter__(self) -> LocalFleet:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _attach(self) -> None:
        """Agents run on their own: take their ports; one that is gone is reported (it
        fails every publish) rather than refusing to start."""
        for host in self.hosts:
            record = running_agent(host.layout.agent)
            if record is None:
                host.port = _last_port(host.layout)
                self.revived.append(HostFailure(host.name, "its agent is not running (agents: "
                                                "attach: start `ship agent --root …` there)"))
            else:
                host.port = int(record["port"])

    def _start_missing(self) -> None:
        """Adopt the agents already serving the hosts; start the others (all at once)."""
        launched = []
        for index, host in enumerate(self.hosts):
            record = running_agent(host.layout.agent)
            if record is not None and record.get("arguments", [])[2:] == self._arguments(host):
                host.port = int(record["port"])
                continue
            if record is not None:  # started with other settings: replace it, keep its workers
                _kill_and_await(int(record["pid"]), None)
            else:
                self._note_gone(host)
            host.port = _last_port(host.layout) or host.port
            self._launch(index)
            launched.append(index)
        for index in launched:
            self._await_agent(index)

    def _note_gone(self, host: _Host) -> None:
        """A host that ran before and lost its agent without being stopped."""
        status = read_json(host.layout.status) or {}
        if not status or status.get("phase") == "stopped":
            return  # a new host, or one stopped on purpose
        workers = live_workers(host.layout)
        what = (f"its {len(workers)} worker(s) kept serving" if workers
                else "no worker was left serving")
        self.revived.append(HostFailure(host.name, f"its agent (pid {status.get('pid')}) was "
                                        f"gone and {what}; started again"))

    def _down(self, host: _Host) -> str | None:
        """Why the host does not serve now, or None."""
        if running_agent(host.layout.agent) is None:
            return "its agent is not running"
        connection = http.client.HTTPConnection("127.0.0.1", host.port, timeout=PROBE_TIMEOUT_S)
        try:
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as error:
            return f"nothing answers on port {host.port} ({type(error).__name__})"
        finally:
            connection.close()
        return None if response.status == 200 else f"port {host.port} answers {response.status}"

    def _arguments(self, host: _Host) -> list[str]:
        """The agent's arguments after --port: what an adopted agent must have been given."""
        return [
            "--root", str(host.layout.root), "--workers", str(self.config.workers),
            "--name", host.name, "--stagger", str(self.rollout.stagger / self._speed),
            "--drain-timeout", str(self.rollout.drain_timeout),
            "--idle-grace", str(self.config.idle_grace),
            "--keep", str(self.rollout.keep_releases),
            "--boot-timeout", str(self.config.boot_timeout),
        ]

    def _launch(self, index: int) -> None:
        """Start a host's agent in a session of its own: it outlives this process."""
        host = self.hosts[index]
        command = [sys.executable, str(AGENT), "--port", str(host.port),
                   *self._arguments(host)]
        with (host.layout.root / "log" / "agent.log").open("ab") as output:
            host.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True)

    def _await_agent(self, index: int) -> None:
        """Until the agent records itself (and the port it listens on)."""
        host = self.hosts[index]
        assert host.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            record = running_agent(host.layout.agent) or {}
            if record.get("pid") == host.process.pid and record.get("port"):
                host.port = int(record["port"])
                return
            if host.process.poll() is not None:
                break
            time.sleep(0.05)
        log = (host.layout.root / "log" / "agent.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"agent of {host.name} did not start:\n{log}")

    def _report(self, host: _Host, desired: Desired) -> dict[str, Any]:
        """The host's status for this publish; an agent that died mid-way has failed."""
        status = read_json(host.layout.status) or {}
        if status.get("publish") != desired.publish:
            status = {"phase": "waiting"}
        status["host"] = host.name
        if status.get("phase") in ("converged", "failed"):
            return status
        if running_agent(host.layout.agent) is None:
            exited = host.process.poll() if host.process else None
            return {**status, "phase": "failed", "failed_at": now_iso(),
                    "reason": "its agent is not running" if exited is None
                    else f"agent exited with code {exited}"}
        return status

    def _pipeline_time_converter(self) -> Callable[[str | None], datetime | None]:
        """Agents stamp wall time; the orchestrator reads pipeline time."""
        wall_now, pipeline_now = utcnow(), self._clock.now()

        def convert(stamp: str | None) -> datetime | None:
            if not stamp:
                return None
            elapsed = (wall_now - datetime.fromisoformat(stamp)).total_seconds()
            return pipeline_now - timedelta(seconds=elapsed * self._speed)

        return convert


def _last_port(layout: HostLayout) -> int:
    """The port the host's last agent listened on (0: none yet), so that a new agent serves
    where clients and the heartbeat look."""
    for doc in (read_json(layout.agent), read_json(layout.status)):
        if isinstance(doc, dict) and isinstance(doc.get("port"), int):
            return doc["port"]
    return 0


def _gone(pid: int) -> bool:
    return process_started(pid) is None


def _kill_and_await(pid: int, child: subprocess.Popen[bytes] | None) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if child is not None:
        child.wait()
    _await_gone([pid], START_TIMEOUT_S)


def _await_gone(pids: list[int], patience: float) -> list[int]:
    """Wait until these processes have exited; those still running after `patience`."""
    deadline = time.monotonic() + patience
    while (left := [pid for pid in pids if not _gone(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def stop_agents(root: Path, patience: float = 60.0,
                layouts: list[HostLayout] | None = None) -> list[str]:
    """Stop the hosts of a local fleet at `root`: SIGTERM every agent (each drains its
    workers), SIGKILL one still running after `patience`, then any worker a killed agent
    left. The names of the hosts whose agent was running."""
    if layouts is None:
        layouts = [HostLayout(d) for d in sorted(Path(root).resolve().glob("host-*"))
                   if (d / "run").is_dir()]
    agents = {layout.root.name: record["pid"] for layout in layouts
              if (record := running_agent(layout.agent))}
    for pid in agents.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in _await_gone(list(agents.values()), patience):
        _kill_and_await(pid, None)
    for layout in layouts:
        for worker in live_workers(layout):
            worker.signal(signal.SIGKILL)
        _await_gone([w.pid for w in live_workers(layout)], patience)
    return sorted(agents)


def fleet_processes(root: Path) -> list[int]:
    """Every process whose command line names this fleet's root, or that runs in a release
    under it: its agents, workers and apps (Linux's /proc; [] elsewhere)."""
    needle = str(Path(root).resolve())
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            named = needle.encode() in (proc / "cmdline").read_bytes()
            named = named or os.readlink(proc / "cwd").startswith(needle + os.sep)
            if named and not _gone(int(proc.name)):
                found.append(int(proc.name))
        except OSError:
            continue
    return found
