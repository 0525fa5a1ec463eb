from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from gates.command import CommandGate, CommandGateConfig
from shiptypes import PreprodTarget, ProviderContext, ReleaseRef
from tests.gates.conftest import alive, assert_no_secret

TARGET = PreprodTarget("preprod-us", "http://127.0.0.1:8080")


def command(context: ProviderContext, line: str, **config: object) -> CommandGate:
    settings = {"type": "command", "command": line, **config}
    return CommandGate(CommandGateConfig.model_validate(settings), context)


def test_exit_0_passes_with_the_tail_of_its_output(context: ProviderContext,
                                                   release: ReleaseRef) -> None:
    line = "for i in 1 2 3 4 5; do echo line $i; done; echo testing {short_sha} at {base_url}"
    result = command(context, line, tail_lines=3).run(release, TARGET)
    assert result.passed and not result.errored
    assert result.summary == "exited 0"
    assert result.output_tail == "line 4\nline 5\ntesting 0123456 at http://127.0.0.1:8080"


def test_a_nonzero_exit_fails_with_its_last_words(context: ProviderContext,
                                                  release: ReleaseRef) -> None:
    result = command(context, "echo running; echo 'FAILED test_login' >&2; exit 4").run(
        release, TARGET)
    assert not result.passed and not result.errored
    assert result.summary == "exited 4: FAILED test_login"
    assert result.output_tail == "running\nFAILED test_login"


def test_a_timeout_kills_the_whole_command_and_errors(
        context: ProviderContext, release: ReleaseRef, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    line = f"echo started; sleep 60 & echo $! > {pidfile}; wait"
    result = command(context, line, timeout=0.5).run(release, TARGET)
    assert not result.passed and result.errored
    assert result.summary == "still running after 0.5s: killed"
    assert result.output_tail == "started"
    assert not alive(int(pidfile.read_text()))


def test_release_fields_cannot_become_shell_syntax(
        context: ProviderContext, release: ReleaseRef, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = replace(release, sha=f"abc; touch {marker}")
    result = command(context, "echo {sha}").run(hostile, TARGET)
    assert result.passed
    assert result.output_tail == f"abc; touch {marker}"
    assert not marker.exists()


def test_the_environment_reaches_the_command_and_its_secrets_are_masked(
        context: ProviderContext, release: ReleaseRef) -> None:
    env = {**context.env, "PLAIN": "visible", "DEPLOY_PASS": "hunter2-long"}
    ctx = ProviderContext("us", "us-east-1", clock=context.clock, env=env)
    line = "echo $PLAIN $GITHUB_TOKEN $DD_API_KEY $DEPLOY_PASS; exit 1"
    result = command(ctx, line, secrets=["DEPLOY_PASS"]).run(release, TARGET)
    assert result.output_tail == "visible *** *** ***"
    assert result.summary == "exited 1: visible *** *** ***"
    assert "hunter2-long" not in result.output_tail
    assert_no_secret(result)


def test_a_missing_working_directory_errors(context: ProviderContext, release: ReleaseRef,
                                            tmp_path: Path) -> None:
    result = command(context, "true", cwd=str(tmp_path / "absent")).run(release, TARGET)
    assert not result.passed and result.errored
    assert "cannot start the command" in result.summary


def test_unknown_placeholders_are_config_errors() -> None:
    with pytest.raises(ValidationError, match="unknown placeholder"):
        CommandGateConfig.model_validate({"type": "command", "command": "make {target_url}"})
