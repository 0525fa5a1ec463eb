"""The command gate: any shell command, passing when it exits 0.

The command is a template: `{sha}`, `{base_url}`, `{slug_uri}` and the other release
fields are filled in, each shell-quoted. It runs with the environment of ship, so a
test suite can read its own secrets there; their values are masked in the output kept.
A command still running at `timeout` is killed, with its whole process group, and the
gate fails. It doubles as a local CI: `ci: {type: command, command: "make test"}`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from gates.support import GuardedGate, Process, check_template, render
from shiptypes import (
    GateResult,
    PreprodTarget,
    ProviderConfig,
    ReleaseRef,
    Seconds,
)


class CommandGateConfig(ProviderConfig):
    type: Literal["command"]
    name: str = "command"
    command: str = Field(min_length=1, description="a shell command; placeholders allowed")
    cwd: Path | None = None
    timeout: Seconds = Field(600.0, gt=0)
    tail_lines: int = Field(40, ge=1, le=10_000, description="lines of output kept in the result")
    secrets: list[str] = Field(default_factory=list,
                               description="more environment variables whose values are masked")

    @field_validator("command")
    @classmethod
    def _known_placeholders(cls, command: str) -> str:
        return check_template(command)


class CommandGate(GuardedGate[CommandGateConfig]):
    def secret_names(self) -> list[str]:
        return self.config.secrets

    def check(self, release: ReleaseRef, target: PreprodTarget) -> GateResult:
        config = self.config
        command = render(config.command, release, target, shell=True)
        with Process(command, env=self._context.env, cwd=config.cwd) as process:
            code = process.wait_until(self._context.clock, config.timeout)
            if code is None:
                process.stop()
            tail = process.tail(config.tail_lines)
        if code is None:
            return GateResult(self.name, False, f"still running after {config.timeout:g}s: "
                              "killed", output_tail=tail, errored=True)
        if code == 0:
            return GateResult(self.name, True, "exited 0", output_tail=tail)
        how = f"killed by signal {-code}" if code < 0 else f"exited {code}"
        return GateResult(self.name, False, how + _last_line(tail), output_tail=tail)


def _last_line(output: str) -> str:
    """The last words of a failed command usually say why: worth a place in the summary."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return f": {lines[-1][:200]}" if lines else ""
