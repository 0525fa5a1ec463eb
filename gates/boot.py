"""The boot gate: the release starts on pre-prod and its health endpoint answers.

With a `command`, the gate starts the release itself (a shell command template such as
`bin/serve --slug {slug_uri} --port {port}`), polls the health endpoint until it answers
`expect_status`, then stops what it started. Without one, pre-prod is already deployed and
the gate only polls. A release that exits or never answers healthy fails the gate, with the
last lines of its output.

In a pipeline with `app:` and no `command`, the gate boots the app itself, before pre-prod
is touched: the release's slug unpacked in a scratch directory, the app's own command run as
a host's agent runs it (rollout/instance.py: a listening socket at fd 3, its private port),
and `health.path` asked on that port. A release whose app cannot boot healthy never
disturbs pre-prod, and is halted by the gate named `boot`.
"""

from __future__ import annotations

import shlex
import socket
import tarfile
import tempfile
import uuid
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

import requests
from pydantic import Field, PrivateAttr, field_validator

from gates.support import GateError, GuardedGate, Process, check_template, render
from rollout.agent import AppSpec, instance_command
from shiptypes import (
    Clock,
    GateResult,
    Link,
    PreprodTarget,
    ProviderConfig,
    ReleaseRef,
    Seconds,
    WallClock,
)

APP_POLL_S = 0.1


class BootGateConfig(ProviderConfig):
    type: Literal["boot"]
    name: str = "boot"
    command: str | None = Field(None, description="starts the release; placeholders allowed")
    cwd: Path | None = None
    path: str = Field("/health", pattern=r"^/", description="health endpoint on pre-prod")
    expect_status: int = Field(200, ge=100, le=599)
    timeout: Seconds = Field(60.0, gt=0, description="deadline for a healthy answer")
    interval: Seconds = Field(1.0, gt=0, description="wait between health polls")
    request_timeout: float = Field(5.0, gt=0, le=600,
                                   description="real seconds for one health poll")
    tail_lines: int = Field(40, ge=1, le=10_000)
    # The pipeline's `app:` (orchestrator.config.AppConfig), set by the pipeline when this
    # gate has no command of its own.
    _app: Any = PrivateAttr(None)

    @field_validator("command")
    @classmethod
    def _known_placeholders(cls, command: str | None) -> str | None:
        return None if command is None else check_template(command)


class BootGate(GuardedGate[BootGateConfig]):
    @property
    def before_preprod(self) -> bool:
        """Whether the release flow runs this gate before it deploys pre-prod."""
        return self.config._app is not None

    def check(self, release: ReleaseRef, target: PreprodTarget) -> GateResult:
        if self.config._app is not None:
            return self._boot_app(release)
        if not target.base_url:
            raise GateError(f"pre-prod target {target.name} has no URL to check")
        url = target.base_url.rstrip("/") + self.config.path
        if self.config.command is None:
            return self._await_health(url, None)
        command = render(self.config.command, release, target, shell=True)
        with Process(command, env=self._context.env, cwd=self.config.cwd) as process:
            return self._await_health(url, process)

    def _boot_app(self, release: ReleaseRef) -> GateResult:
        spec = AppSpec.load(self.config._app.agent_spec())
        with tempfile.TemporaryDirectory(prefix="ship-boot-") as scratch:
            where = unpack_slug(release, Path(scratch))
            with AppBoot(spec, release, where, self._context.env) as boot:
                # The app's health timeout bounds a real process, as on the hosts: real
                # seconds, polled briskly.
                return self._await_health(boot.health_url(spec.health_path), boot.process,
                                          (WallClock(), spec.health_timeout, APP_POLL_S))

    def _await_health(self, url: str, process: Process | None,
                      timing: tuple[Clock, float, float] | None = None) -> GateResult:
        """Polls `url` until healthy; `timing` is (clock, timeout, interval), by default
        the gate's own in pipeline time."""
        config = self.config
        clock, timeout, interval = timing or (self._context.clock, config.timeout,
                                              config.interval)
        deadline = clock.now() + timedelta(seconds=timeout)
        last = "no answer yet"
        with requests.Session() as session:
            while True:
                if process and (code := process.exit_code()) is not None:
                    return self._failed(f"the release exited with code {code} before "
                                        f"{url} answered healthy", url, process)
                answer = _health(session, url, config.request_timeout)
                if answer == config.expect_status:
                    return GateResult(self.name, True, f"healthy: {url} answered {answer}",
                                      links=(Link("Health", url),))
                last = f"HTTP {answer}" if isinstance(answer, int) else answer
                left = (deadline - clock.now()).total_seconds()
                if left <= 0:
                    return self._failed(f"{url} did not answer {config.expect_status} within "
                                        f"{timeout:g}s (last: {last})", url, process)
                clock.sleep(min(interval, left))

    def _failed(self, summary: str, url: str, process: Process | None) -> GateResult:
        tail = process.tail(self.config.tail_lines) if process else ""
        return GateResult(self.name, False, summary, links=(Link("Health", url),),
                          output_tail=tail)


def _health(session: requests.Session, url: str, timeout: float) -> int | str:
    """The status code of one health poll, or why there was none."""
    try:
        return session.get(url, timeout=timeout, allow_redirects=False).status_code
    except requests.Timeout:
        return f"no answer within {timeout:g}s"
    except requests.RequestException as error:
        return f"cannot connect ({type(error).__name__})"


# --- booting an app's slug on this machine ----------------------------------------------------

def unpack_slug(release: ReleaseRef, into: Path) -> Path:
    """The release's slug (a local file: the `tarball` or `git` build's local store),
    unpacked under `into`."""
    uri = release.slug.uri if release.slug else ""
    parts = urlsplit(uri)
    if parts.scheme != "file":
        raise GateError(f"the boot gate boots slugs on this machine only (file://), not "
                        f"{uri or 'a release without a slug'}")
    where = into / "release"
    try:
        with tarfile.open(url2pathname(parts.path), mode="r:gz") as tar:
            tar.extractall(where, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise GateError(f"cannot unpack slug {release.slug.id}: {error}") from None
    return where


class AppBoot:
    """The app's command run in the unpacked slug as a host's agent runs it
    (rollout.agent.instance_command): the shared listening socket at fd 3 and, unless the
    app binds {port} itself, its private one at fd 4; SHIP_RELEASE, SHIP_SHA and PORT in its
    environment."""

    def __init__(self, spec: AppSpec, release: ReleaseRef, where: Path,
                 env: Mapping[str, str]) -> None:
        self.shared = _listener()
        self.private = _listener()
        self.port = self.private.getsockname()[1]
        shared_port = self.shared.getsockname()[1]
        self.health_port = shared_port if spec.health_port == "shared" else self.port
        ship_env = {"SHIP_RELEASE": release.name, "SHIP_SHA": release.sha}
        handoff = f"@ship-boot-{uuid.uuid4().hex}"  # a socket no agent asks for
        command, app_env, fds = instance_command(spec, ship_env, self.shared.fileno(),
                                                 self.private, handoff, base_env=env)
        self.process = Process(shlex.join(command), env=app_env, cwd=where, pass_fds=fds)

    def health_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.health_port}{path}"

    def __enter__(self) -> AppBoot:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.process.close()
        self.shared.close()
        self.private.close()


def _listener() -> socket.socket:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.set_inheritable(True)
    return listener
