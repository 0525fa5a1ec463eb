"""A real fleet on this machine: N host agents (rollout/agent.py) as processes on 127.0.0.1,
each running K workers of the example app (examples/app) on one shared socket.

publish() writes desired.json into every host's root at once and returns; each agent staggers
and restarts on its own. observe() reads every host's status.json: O(hosts) small reads.
Durations: the stagger is pipeline time (divided by the clock's speed); the drain timeout and
the boot timeout bound real requests and real processes, so they are real seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from rollout.agent import Desired, HostLayout, live_workers, now_iso, read_json
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


class LocalFleetConfig(ProviderConfig):
    driver: Literal["local"]
    hosts: int = Field(2, ge=1, le=64)
    workers: int = Field(2, ge=1, le=32, description="processes per host, restarted one at a time")
    base_port: int = Field(0, ge=0, le=65535,
                           description="host i listens on base_port + i; 0 picks free ports")
    root: str | None = Field(None, description="directory of the hosts' roots; default: a new "
                                               "folder under the state dir, removed on close")
    boot_timeout: Seconds = Field(30.0, gt=0, description="a replacement worker not healthy "
                                                          "by then fails its host (real seconds)")
    idle_grace: Seconds = Field(1.0, ge=0, description="a draining worker closes keep-alive "
                                                       "connections idle this long")
    agents: Literal["start", "attach"] = Field(
        "start", description="start: this process starts the hosts' agents and stops them on "
        "close; attach: the agents run on their own at `root` (`ship agent`, e.g. under "
        "systemd) and outlive this process, as real hosts outlive their orchestrator")

    @model_validator(mode="after")
    def _attach_needs_root(self) -> LocalFleetConfig:
        if self.agents == "attach" and not self.root:
            raise ValueError("agents: attach needs the `root` the agents run in")
        return self

    def for_slot(self, slot: int) -> LocalFleetConfig:
        """The pre-prod of release slot `slot` (`train.in_flight`): hosts of its own at
        `<root>-<slot>` (where attached agents must run), on ports after the slots before."""
        if not slot:
            return self
        return self.model_copy(update={
            "root": f"{self.root}-{slot}" if self.root else None,
            "base_port": self.base_port + slot * self.hosts if self.base_port else 0})


@dataclass
class _Host:
    name: str
    layout: HostLayout
    port: int
    process: subprocess.Popen[bytes] | None = None


class LocalFleet:
    """Implements FleetDriver for `driver: local`."""

    def __init__(self, config: LocalFleetConfig, rollout: RolloutSettings,
                 context: ProviderContext) -> None:
        self.config = config
        self.rollout = rollout
        self._clock = context.clock
        self._speed = float(getattr(context.clock, "speed", 1.0))
        self._owns_root = config.root is None
        self.root = (Path(config.root) if config.root else
                     context.state_dir / "fleet" / f"{context.pipeline}-{uuid.uuid4().hex[:8]}")
        self.hosts = [
            _Host(f"host-{i}", HostLayout(self.root.resolve() / f"host-{i}"),
                  config.base_port + i if config.base_port else 0)
            for i in range(config.hosts)
        ]
        # What the fleet was last told, by this process or one before it (a restarted
        # orchestrator goes on observing the same publish).
        self._published: Desired | None = Desired.load(self.hosts[0].layout.desired)
        if config.agents == "attach":
            for host in self.hosts:
                host.port = _running_agent_port(host.layout)
            return
        try:
            for index in range(len(self.hosts)):
                self._launch(index)
            for index in range(len(self.hosts)):
                self._await_agent(index)
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
            published_at=now_iso(), stagger=self.rollout.stagger / self._speed)
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

    def kill_host(self, index: int) -> None:
        """SIGKILL a host's agent (its workers keep serving), as a crash would."""
        process = self.hosts[index].process
        if process and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def start_host(self, index: int) -> None:
        """Start a host's agent again; it adopts the workers it left and carries on."""
        self._launch(index)
        self._await_agent(index)

    def close(self) -> None:
        """Stop every agent (each drains its workers), then any worker a killed agent left.
        Attached agents are not this process's to stop."""
        if self.config.agents == "attach":
            return
        running = [h.process for h in self.hosts if h.process and h.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        patience = self.rollout.drain_timeout + self.config.boot_timeout + 5.0
        for process in running:
            try:
                process.wait(timeout=patience)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for host in self.hosts:
            for worker in live_workers(host.layout):
                worker.signal(signal.SIGKILL)
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalFleet:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _launch(self, index: int) -> None:
        host = self.hosts[index]
        command = [
            sys.executable, str(AGENT), "--root", str(host.layout.root),
            "--port", str(host.port), "--workers", str(self.config.workers), "--name", host.name,
            "--stagger", str(self.rollout.stagger / self._speed),
            "--drain-timeout", str(self.rollout.drain_timeout),
            "--idle-grace", str(self.config.idle_grace),
            "--keep", str(self.rollout.keep_releases),
            "--boot-timeout", str(self.config.boot_timeout), "--exit-with-parent",
        ]
        with (host.layout.root / "log" / "agent.log").open("ab") as output:
            host.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True)

    def _await_agent(self, index: int) -> None:
        """Until the agent reports the port it listens on."""
        host = self.hosts[index]
        assert host.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            status = read_json(host.layout.status) or {}
            if status.get("pid") == host.process.pid and status.get("port"):
                host.port = status["port"]
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
        exited = host.process.poll() if host.process else None
        if exited is not None and status.get("phase") not in ("converged", "failed"):
            return {**status, "phase": "failed", "failed_at": now_iso(),
                    "reason": f"agent exited with code {exited}"}
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


def _running_agent_port(layout: HostLayout) -> int:
    """The port of the agent running at `layout` (attach mode), or why there is none."""
    status = read_json(layout.status) or {}
    pid = status.get("pid")
    try:
        if not isinstance(pid, int) or status.get("phase") == "stopped":
            raise ProcessLookupError
        os.kill(pid, 0)
    except OSError:
        raise RuntimeError(f"no agent is running at {layout.root} (agents: attach expects "
                           "`ship agent --root …` to run there)") from None
    return int(status["port"])
