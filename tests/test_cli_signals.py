"""`ship` stopped from outside: SIGTERM or SIGINT ends a command with one line saying what
was left and exit 143 or 130, no traceback, and the store is left for the next ship process
to settle; a reader that closes the pipe ends `ship` quietly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.release import State
from orchestrator.store import Store
from tests.conftest import SIM_PIPELINES
from tests.faults.crash import wait_for
from tests.test_cli import env, ship  # noqa: F401 - env is a fixture
from tests.test_cli_output import NASTY, SHOWN

# A build that outlasts any test: the signal always lands while it runs.
SLOW_BUILD = SIM_PIPELINES.replace("build: {type: sim}", "build: {type: sim, duration: 3600}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_deploy_ends_it_in_one_line_and_reconcile_settles_it(
        sig: signal.Signals, env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    # No PREFECT_API_URL: the deploy starts Prefect's temporary API, as a person's would.
    env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    config = tmp_path / "pipelines.yaml"
    config.write_text(SLOW_BUILD)
    store = Store(env["SHIP_DATABASE_URL"])
    deploy = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "-c", str(config), "deploy", "us",
         "--message", NASTY, "--as", NASTY], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        def building() -> bool:
            if deploy.poll() is not None:
                raise AssertionError(f"ship deploy ended early: {deploy.communicate()}")
            return any(r.state == State.BUILDING for r in store.releases("us"))

        wait_for(building, "us#1 building", timeout=300, every=0.2)
        deploy.send_signal(sig)
        _, stderr = deploy.communicate(timeout=120)
        # Prefect's temporary API server (its child, in its process group) is stopped too.
        wait_for(lambda: not _group_alive(deploy.pid), "the temporary API server to stop")
    finally:
        if _group_alive(deploy.pid):
            os.killpg(deploy.pid, signal.SIGKILL)
    assert deploy.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"stopped by {sig.name}: release us#1 was building; the next ship process "
        "(or `ship reconcile`) settles it")
    assert store.releases("us")[0].state == State.BUILDING  # as it was: nothing half-written

    settled = ship("-c", str(config), "reconcile", "--no-watch", env=env, cwd=tmp_path)
    assert settled.returncode == 0, settled.stderr
    assert "Traceback" not in settled.stderr and "us #1" not in settled.stdout
    release = store.releases("us")[0]
    assert release.state == State.FAILED and "restarted mid-building" in (release.reason or "")
    assert store.pipeline_state("us").pending_merges == 1  # its commit waits for the next
    events = ship("-c", str(config), "events", "us", env=env, cwd=tmp_path)
    assert events.returncode == 0 and SHOWN in events.stdout


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_reader_that_closes_the_pipe_ends_ship_quietly(
        env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    for args in (["schema"], ["validate", str(Path(__file__).parents[1] / "pipelines.yaml")]):
        # `ship … | true`: the reader is gone before ship writes a byte.
        reader, writer = os.pipe()
        os.close(reader)
        try:
            result = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args],
                                    cwd=tmp_path, env=env, stdout=writer,
                                    stderr=subprocess.PIPE, text=True, timeout=120)
        finally:
            os.close(writer)
        assert result.returncode == 128 + signal.SIGPIPE, result.stderr
        assert result.stderr == ""


def test_ship_schema_into_head_prints_its_first_line(env: dict[str, str],  # noqa: F811
                                                     tmp_path: Path) -> None:
    shell = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{sys.executable} -m orchestrator.cli schema | head -1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert shell.stdout == "{\n" and shell.stderr == ""
    assert shell.returncode in (0, 128 + signal.SIGPIPE)  # 0 when head read it all in time
