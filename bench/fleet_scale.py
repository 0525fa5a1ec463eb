"""Fleet scale: what one rollout costs the orchestrator with simulated fleets of 1,000 and
10,000 hosts, and how fast the fleet converges in simulated time.

    .venv/bin/python bench/fleet_scale.py [--hosts 1000 10000] [--poll 5] [--speed 600]

Each fleet size runs in a fresh process, so its peak RSS is that rollout's alone. The
clock is a ScaledClock (`--speed` pipeline seconds per real second); the orchestrator
publishes, then observes every `--poll` pipeline seconds until the fleet is done. CPU is
the process's CPU time over publish + observing; the convergence times are read from the
last FleetStatus and count from the moment publish returns (a scaled clock would otherwise
multiply publish's own CPU time by the speed-up).

Targets at 10,000 hosts: <= 10 s CPU, <= 300 MB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout.sim import SimFleet, SimFleetConfig
from shiptypes import ProviderContext, ReleaseRef, RolloutSettings, ScaledClock

CPU_TARGET_S = 10.0
RSS_TARGET_MB = 300.0


def rollout(hosts: int, poll: float, speed: float, stagger: float, seed: int) -> dict:
    """One release published to a fleet and observed until done, measured."""
    clock = ScaledClock(speed)
    fleet = SimFleet(SimFleetConfig(driver="sim", hosts=hosts, seed=seed),
                     RolloutSettings(stagger=stagger), ProviderContext("bench", "us", clock=clock))
    base_rss = _peak_rss_mb()
    cpu, wall = time.process_time(), time.perf_counter()
    fleet.publish(ReleaseRef(id=1, pipeline="bench", number=1, sha="0" * 40))
    promoted = clock.now()  # hosts are told when publish returns
    observations = 1
    status = fleet.observe()
    while not status.done:
        clock.sleep(poll)
        status = fleet.observe()
        observations += 1

    def after(moment: datetime | None) -> float | None:
        return None if moment is None else (moment - promoted).total_seconds()

    return {
        "hosts": hosts,
        "cpu_s": time.process_time() - cpu,
        "wall_s": time.perf_counter() - wall,
        "observations": observations,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_before_mb": base_rss,
        "first_request_s": after(status.first_request_at),
        "half_s": after(status.half_at),
        "p95_s": after(status.p95_at),
        "all_s": after(status.converged_at),
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _clock_text(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--poll", type=float, default=5.0, help="pipeline seconds between looks")
    parser.add_argument("--speed", type=float, default=600.0, help="clock speed-up")
    parser.add_argument("--stagger", type=float, default=120.0, help="as in pipelines.yaml")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(rollout(args.hosts[0], args.poll, args.speed, args.stagger, args.seed)))
        return
    print(f"sim fleet rollout: stagger {args.stagger:g}s, a look every {args.poll:g}s of "
          f"pipeline time, clock x{args.speed:g}")
    print(f"{'hosts':>7} {'CPU s':>7} {'peak RSS MB':>12} {'(before)':>9} {'looks':>6} "
          f"{'first req':>9} {'50%':>6} {'95%':>6} {'100%':>6}")
    for hosts in args.hosts:
        one = subprocess.run(
            [sys.executable, __file__, "--one", "--hosts", str(hosts), "--poll", str(args.poll),
             "--speed", str(args.speed), "--stagger", str(args.stagger), "--seed", str(args.seed)],
            capture_output=True, text=True, check=True)
        r = json.loads(one.stdout)
        print(f"{r['hosts']:>7,} {r['cpu_s']:>7.3f} {r['peak_rss_mb']:>12.1f} "
              f"{r['rss_before_mb']:>9.1f} {r['observations']:>6} "
              f"{_clock_text(r['first_request_s']):>9} {_clock_text(r['half_s']):>6} "
              f"{_clock_text(r['p95_s']):>6} {_clock_text(r['all_s']):>6}")
        if r["hosts"] == 10000:
            within = r["cpu_s"] <= CPU_TARGET_S and r["peak_rss_mb"] <= RSS_TARGET_MB
            print(f"{'':8}10,000-host target (<= {CPU_TARGET_S:g} s CPU, "
                  f"<= {RSS_TARGET_MB:g} MB): {'within' if within else 'OVER'}")


if __name__ == "__main__":
    main()
