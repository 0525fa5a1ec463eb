"""Whatever a ship process starts dies with it: Prefect's temporary API, started by a
`ship deploy` with no PREFECT_API_URL, is gone soon after that process is SIGKILLed (it used
to be reparented to PID 1 and serve forever, ~200 MB each)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, SIM_PIPELINES
from tests.serve.conftest import wait_for


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found += [int(child) for child in text.split()]
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running, and not a zombie left for PID 1 to reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def temporary_api_of(pid: int) -> int | None:
    return next((child for child in children(pid)
                 if "orchestrator.lifeline" in command_line(child)), None)


def a_deploy_on_its_own_prefect(workdir: Path) -> subprocess.Popen[bytes]:
    """`ship deploy` with no PREFECT_API_URL (so it starts Prefect's temporary API) and a
    build that lasts an hour: it is still running whenever it is killed."""
    (workdir / "pipelines.yaml").write_text(SIM_PIPELINES.replace(
        "build: {type: sim}", "build: {type: sim, duration: 1h}"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"SHIP_DATABASE_URL": f"sqlite:///{workdir}/ship.db", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "deploy", "us"],
                            cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def test_a_killed_ship_process_takes_prefects_temporary_api_with_it(tmp_path: Path) -> None:
    ship = a_deploy_on_its_own_prefect(tmp_path)
    try:
        api = wait_for(lambda: temporary_api_of(ship.pid), "Prefect's temporary API to start",
                       timeout=180)
        assert alive(api)
    finally:
        ship.send_signal(signal.SIGKILL)
        ship.wait()
    wait_for(lambda: not alive(api), "the temporary API to stop after its ship was killed",
             timeout=60)
