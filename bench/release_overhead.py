"""Orchestration overhead per release: N releases whose stage work takes no time, on the
simulated providers, through the real Prefect engine (its temporary local API) and the
SQLite store. Prints the median and p95 time per release (target ≤ 0.7 s) and peak RSS.

    .venv/bin/python bench/release_overhead.py [--releases 30] [--hosts 300]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator import config
from orchestrator.runner import Runner
from orchestrator.runtime import Ship, use
from orchestrator.store import Store
from shiptypes import Commit, WallClock

INSTANT = """
version: 1
pipelines:
  bench:
    region: local
    repo: {{name: example/chat}}
    build: {{type: sim}}
    ci: {{type: sim, name: ci}}
    gates: [{{type: sim, name: boot}}, {{type: sim, name: synthetics}}]
    preprod: {{fleet: {{driver: sim, hosts: 1, fetch: 0, worker_boot: 0, drain: 0}}}}
    fleet: {{driver: sim, hosts: {hosts}, fetch: 0, worker_boot: 0, drain: 0}}
    rollout: {{stagger: 0}}
    heartbeat:
      source: {{type: sim}}
      window: 1s
      watch: 1ms
      metrics: [{{name: messages_created, query: messages.created}}]
    notify: {{console: false}}
"""


async def run(releases: int, hosts: int, workdir: Path) -> tuple[list[float], list[float]]:
    loaded = config.parse(INSTANT.format(hosts=hosts))
    clock = WallClock()
    store = Store(f"sqlite:///{workdir}/ship.db", clock)
    runner = Runner(use(Ship(loaded, store, clock)))
    to_live, with_watch = [], []
    for n in range(releases + 1):
        commit = Commit(f"{n:040x}", "bench", f"change {n}", clock.now())
        began = time.perf_counter()
        outcome = await runner.deploy("bench", [commit], "bench", watch=False)
        live = time.perf_counter()
        await runner.settle("bench")
        watched = time.perf_counter()
        assert outcome.state == "live", outcome
        if n:  # the first release pays for starting Prefect's temporary API
            to_live.append(live - began)
            with_watch.append(watched - began)
        else:
            print(f"first release (starts Prefect's temporary API): {watched - began:.1f} s")
    return to_live, with_watch


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(0.95 * len(ordered) + 0.999999) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=30)
    parser.add_argument("--hosts", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        to_live, with_watch = asyncio.run(run(args.releases, args.hosts, Path(workdir)))
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    server_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"releases: {args.releases} on {args.hosts} simulated hosts, zero-length stages")
    print(f"merge → live (release flow, 6 tasks):      median {statistics.median(to_live):.3f} s"
          f"  p95 {p95(to_live):.3f} s   (target ≤ 0.7 s)")
    print(f"merge → watched (+ watch flow):             median "
          f"{statistics.median(with_watch):.3f} s  p95 {p95(with_watch):.3f} s")
    print(f"peak RSS: ship process {self_rss:.0f} MB; Prefect's temporary API server "
          f"{server_rss:.0f} MB")


if __name__ == "__main__":
    main()
