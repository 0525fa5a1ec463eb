"""The boot gate: the release starts on pre-prod and its health endpoint answers.

With a `command`, the gate starts the release itself (a shell command template such as
`bin/serve --slug {slug_uri} --port {port}`), polls the health endpoint until it answers
`expect_status`, then stops what it started. Without one, pre-prod is already deployed and
the gate only polls. A release that exits or never answers healthy fails the gate, with the
last lines of its output.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

import requests
from pydantic import Field, field_validator

from gates.support import GateError, GuardedGate, Process, check_template, render
from shiptypes import (
    GateResult,
    Link,
    PreprodTarget,
    ProviderConfig,
    ReleaseRef,
    Seconds,
)


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

    @field_validator("command")
    @classmethod
    def _known_placeholders(cls, command: str | None) -> str | None:
        return None if command is None else check_template(command)


class BootGate(GuardedGate[BootGateConfig]):
    def check(self, release: ReleaseRef, target: PreprodTarget) -> GateResult:
        if not target.base_url:
            raise GateError(f"pre-prod target {target.name} has no URL to check")
        url = target.base_url.rstrip("/") + self.config.path
        if self.config.command is None:
            return self._await_health(url, None)
        command = render(self.config.command, release, target, shell=True)
        with Process(command, env=self._context.env, cwd=self.config.cwd) as process:
            return self._await_health(url, process)

    def _await_health(self, url: str, process: Process | None) -> GateResult:
        clock, config = self._context.clock, self.config
        deadline = clock.now() + timedelta(seconds=config.timeout)
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
                                        f"{config.timeout:g}s (last: {last})", url, process)
                clock.sleep(min(config.interval, left))

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
