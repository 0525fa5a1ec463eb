"""How fast a person's rollback reaches the fleet: from the moment `ship rollback` starts to
every host of a real local fleet told (each host's desired.json names the target), with no
`ship serve` running and no Prefect server (the CLI does it all), and through a running
`ship serve` (the CLI hands it over).

    .venv/bin/python bench/rollback_speed.py [--samples 5]

Targets: ≤ 2 s with no ship serve, ≤ 0.5 s through one. The whole command (until every host
has started the target and the CLI exits) is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator import (
    engine,  # noqa: F401 - Prefect settings before Prefect loads
    handle,
)
from rollout.agent import Desired
from tests.faults.crash import SPEED, CrashWorld, Settings, wait_for

Sample = tuple[float, float]  # seconds to every host told, seconds to the command's end


def told_at(world: CrashWorld, number: int) -> float | None:
    """When the last host was told of release `number` (its desired.json written)."""
    times = []
    for host in world.fleet.hosts:
        desired = Desired.load(host.layout.desired)
        if desired is None or desired.release != number:
            return None
        times.append(host.layout.desired.stat().st_mtime)
    return max(times)


def ship(world: CrashWorld, *args: str) -> tuple[int, str]:
    """The real CLI, as a person types it: (exit code, output)."""
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--config",
                           str(world.config_path), "--speed", str(SPEED), *args],
                          cwd=world.dir, env=world.env, capture_output=True, text=True,
                          timeout=300)
    return done.returncode, done.stdout + done.stderr


def one_rollback(world: CrashWorld, serve: bool) -> Sample:
    """Ship releases n and n+1, then time `ship rollback --to n`."""
    world.store.unlock("us", "bench", "next sample")
    target = world.seed(len(world.store.releases("us", limit=1000)) + 1).number
    world.seed(target + 1)
    began = time.time()
    code, output = ship(world, "rollback", "us", "--to", str(target), "--reason", "bench")
    ended = time.time()
    assert code == 0, output
    told = wait_for(lambda: told_at(world, target), f"hosts told of #{target}", 30)
    if serve:
        assert "rolling back from this process" not in output, output
    return told - began, ended - began


def serve_beside(world: CrashWorld) -> subprocess.Popen[bytes]:
    log = (world.dir / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "--config", str(world.config_path),
         "--speed", str(SPEED), "serve", "--port", "0"], cwd=world.dir, env=world.env, stdout=log,
        stderr=subprocess.STDOUT)

    def ready() -> bool:
        found = handle.find(world.dir / ".ship", world.config_path, world.db_url)
        if found is None:
            return False
        import requests

        return requests.get(f"{found.url}/healthz", timeout=5).json()["prefect"] == "ready"

    wait_for(ready, "ship serve and its Prefect API", 180)
    return process


def measure(samples: int, serve: bool) -> list[Sample]:
    with tempfile.TemporaryDirectory(prefix="ship-rollback-") as workdir:
        world = CrashWorld(Path(workdir), "", Settings(stagger=0))
        world.env.pop("PREFECT_API_URL", None)
        server = serve_beside(world) if serve else None
        try:
            return [one_rollback(world, serve) for _ in range(samples)]
        finally:
            if server is not None:
                server.terminate()
                server.wait(60)
            world.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    print(f"rollback by hand, real local fleet (2 hosts × 2 workers), {os.cpu_count()} cores; "
          f"{args.samples} samples each")
    for serve, target in ((False, 2.0), (True, 0.5)):
        results = measure(args.samples, serve)
        told = [t for t, _ in results]
        whole = [w for _, w in results]
        where = "through ship serve" if serve else "no ship serve, no Prefect server"
        print(f"{where:<34} every host told: median {statistics.median(told):.2f} s, "
              f"max {max(told):.2f} s (target ≤ {target} s) · command: median "
              f"{statistics.median(whole):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
