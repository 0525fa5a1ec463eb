"""The local fleet under load through a rolling restart and a rollback: real agents, real
workers of examples/app, real HTTP.

    .venv/bin/python bench/fleet_local.py [--hosts 4] [--workers 3] [--clients 8] [--rate 25]
                                          [--stagger 1] [--drain-timeout 5] [--settle 1]
                                          [--boot-delay 0]

A steady stream of requests (`--clients` threads x `--rate` requests/s, round-robin over the
hosts, half keep-alive, one in four a POST /messages) runs while release 2 is published to a
fleet serving release 1, then while release 1 is published again (a rollback to a kept
release). For each phase it prints requests sent, failed, the rate achieved, p50/p99 latency,
and the fleet's timings from FleetStatus (seconds after publish).

`--workers 1 --boot-delay 2` is a host of one worker whose app takes 2 s to boot (as a
gunicorn HUP would): a restart that stopped the worker before its replacement served would
fail or stall requests for those 2 s; a surge restart shows neither.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.tarball import TarballBuildConfig, TarballBuilder
from rollout.local import LocalFleet, LocalFleetConfig
from shiptypes import FleetStatus, ProviderContext, ReleaseRef, RolloutSettings
from tests.rollout.loadgen import Load, Outcome

APP = Path(__file__).resolve().parents[1] / "examples" / "app"


def build(number: int, store: Path, context: ProviderContext,
          boot_delay: float = 0.0) -> ReleaseRef:
    config = TarballBuildConfig(type="tarball", source=str(APP), store=str(store),
                                release_json={"boot_delay": boot_delay} if boot_delay else {})
    ref = ReleaseRef(id=number, pipeline="bench", number=number, sha=f"{number:040x}")
    return replace(ref, slug=TarballBuilder(config, context).build(ref))


def until_done(fleet: LocalFleet) -> FleetStatus:
    while not (status := fleet.observe()).done:
        time.sleep(0.05)
    return status


def percentile(values: list[float], share: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


def report(phase: str, outcomes: list[Outcome], seconds: float, status: FleetStatus,
           published: float) -> None:
    latencies = [o.latency * 1000 for o in outcomes]
    failed = [o for o in outcomes if not o.ok]

    def after(moment: datetime | None) -> str:
        return f"{moment.timestamp() - published:.2f}s" if moment else "-"

    print(f"{phase:<9} sent {len(outcomes):>5}  failed {len(failed):>3}  "
          f"rate {len(outcomes) / seconds:6.1f}/s  p50 {percentile(latencies, 0.5):6.1f} ms  "
          f"p99 {percentile(latencies, 0.99):6.1f} ms  max {max(latencies, default=0):6.1f} ms")
    if status.hosts:
        print(f"          hosts {status.converged}/{status.hosts} converged, {status.failed} "
              f"failed; first request {after(status.first_request_at)}, half "
              f"{after(status.half_at)}, p95 {after(status.p95_at)}, all "
              f"{after(status.converged_at)}")
    for outcome in failed[:5]:
        print(f"          failure: {outcome.method} host {outcome.host}: {outcome.error}")


def phase(load: Load, fleet: LocalFleet, release: ReleaseRef, name: str) -> None:
    start, published = time.monotonic(), time.time()
    fleet.publish(release)
    status = until_done(fleet)
    end = time.monotonic()
    report(name, load.between(start, end), end - start, status, published)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=float, default=25.0, help="requests/s per client")
    parser.add_argument("--stagger", type=float, default=1.0)
    parser.add_argument("--drain-timeout", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=1.0, help="steady load before and after")
    parser.add_argument("--boot-delay", type=float, default=0.0,
                        help="seconds each worker of the app takes to boot")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ship-bench-") as scratch:
        context = ProviderContext("bench", "local", state_dir=Path(scratch))
        one, two = (build(n, Path(scratch) / "slugs", context, args.boot_delay)
                    for n in (1, 2))
        settings = RolloutSettings(stagger=args.stagger, drain_timeout=args.drain_timeout)
        config = LocalFleetConfig(driver="local", hosts=args.hosts, workers=args.workers)
        started = time.monotonic()
        with LocalFleet(config, settings, context) as fleet:
            fleet.publish(one)
            until_done(fleet)
            print(f"{args.hosts} hosts x {args.workers} workers up in "
                  f"{time.monotonic() - started:.2f}s; load: {args.clients} clients x "
                  f"{args.rate:g}/s; stagger {args.stagger:g}s; boot delay "
                  f"{args.boot_delay:g}s")
            with Load(fleet.host_urls, clients=args.clients, rate=args.rate) as load:
                time.sleep(args.settle)
                steady = time.monotonic()
                report("steady", load.between(steady - args.settle, steady), args.settle,
                       FleetStatus(None, 0, 0, 0, 0), 0.0)
                phase(load, fleet, two, "restart")
                time.sleep(args.settle)
                phase(load, fleet, one, "rollback")
                time.sleep(args.settle)
            drains = [s["drains"] for s in fleet.statuses()]
            print(f"total     sent {len(load.outcomes)}, failed {len(load.failures())}; drains: "
                  f"{sum(d['clean'] for d in drains)} clean, "
                  f"{sum(d['aborted'] for d in drains)} cut requests short, "
                  f"{sum(d['killed'] for d in drains)} killed")


if __name__ == "__main__":
    main()
