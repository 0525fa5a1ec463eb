from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from gates.boot import BootGate, BootGateConfig
from shiptypes import PreprodTarget, ProviderContext, ReleaseRef, ScaledClock
from tests.gates.conftest import APP, alive, assert_no_secret, free_port

PYTHON = shlex.quote(sys.executable)


def boot(context: ProviderContext, **config: object) -> BootGate:
    return BootGate(BootGateConfig.model_validate({"type": "boot", **config}), context)


def start_app(pidfile: Path, healthy_after: float = 0.0) -> str:
    return (f"{PYTHON} {APP} --port {{port}} --sha {{sha}} --pidfile {pidfile} "
            f"--healthy-after {healthy_after}")


def local_target() -> PreprodTarget:
    return PreprodTarget("preprod-us", f"http://127.0.0.1:{free_port()}")


def test_boot_starts_the_release_passes_once_healthy_and_stops_it(
        context: ProviderContext, release: ReleaseRef, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    gate = boot(context, command=start_app(pidfile, healthy_after=0.3), interval=0.05, timeout=10)
    result = gate.run(release, local_target())
    assert result.passed and not result.errored, result
    assert "answered 200" in result.summary
    assert result.links[0].title == "Health" and result.links[0].url.endswith("/health")
    assert result.duration_s >= 0.3
    assert not alive(int(pidfile.read_text()))


def test_a_release_that_exits_fails_with_the_end_of_its_output(
        context: ProviderContext, release: ReleaseRef) -> None:
    command = "echo booting {short_sha}; echo 'error: no database configured' >&2; exit 3"
    result = boot(context, command=command, interval=0.05, timeout=10).run(release, local_target())
    assert not result.passed and not result.errored
    assert "exited with code 3" in result.summary
    assert "booting 0123456" in result.output_tail
    assert "error: no database configured" in result.output_tail


def test_a_release_that_never_gets_healthy_fails_at_the_timeout_and_is_killed(
        context: ProviderContext, release: ReleaseRef, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    gate = boot(context, command=start_app(pidfile, healthy_after=600), interval=0.05, timeout=1)
    result = gate.run(release, local_target())
    assert not result.passed and not result.errored
    assert "did not answer 200 within 1s (last: HTTP 503)" in result.summary
    assert "listening on" in result.output_tail
    assert "GET /health" in result.output_tail
    assert not alive(int(pidfile.read_text()))


def test_without_a_command_it_polls_the_deployed_preprod(
        context: ProviderContext, release: ReleaseRef, app: PreprodTarget) -> None:
    result = boot(context).run(release, app)
    assert result.passed, result
    assert result.output_tail == ""


def test_a_wrong_status_fails(context: ProviderContext, release: ReleaseRef,
                              app: PreprodTarget) -> None:
    gate = boot(context, path="/nowhere", timeout=0.3, interval=0.05)
    result = gate.run(release, app)
    assert not result.passed and not result.errored
    assert "last: HTTP 404" in result.summary


def test_nothing_listening_says_so(context: ProviderContext, release: ReleaseRef) -> None:
    result = boot(context, timeout=0.3, interval=0.05).run(release, local_target())
    assert not result.passed
    assert "cannot connect" in result.summary


def test_no_preprod_url_errors(context: ProviderContext, release: ReleaseRef) -> None:
    result = boot(context).run(release, PreprodTarget("preprod-us", None))
    assert not result.passed and result.errored
    assert "no URL" in result.summary


def test_secrets_in_the_output_are_masked(context: ProviderContext, release: ReleaseRef) -> None:
    result = boot(context, command="echo token=$GITHUB_TOKEN; exit 1",
                  timeout=5, interval=0.05).run(release, local_target())
    assert "token=***" in result.output_tail
    assert_no_secret(result)


def test_unknown_placeholders_are_config_errors() -> None:
    with pytest.raises(ValidationError, match="unknown placeholder"):
        BootGateConfig.model_validate({"type": "boot", "command": "serve --port {prot}"})


def test_the_gate_takes_pipeline_time_from_its_clock(release: ReleaseRef) -> None:
    context = ProviderContext("us", "us-east-1", clock=ScaledClock(speed=20))
    result = boot(context, timeout=20, interval=1).run(release, local_target())
    assert not result.passed
    assert "within 20s" in result.summary
    assert result.duration_s >= 20  # pipeline seconds: about one real second at speed 20
