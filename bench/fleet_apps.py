"""An unmodified gunicorn app (Flask, 2 s to boot, 3 workers) on a local fleet, rolled under
steady load; beside it, gunicorn's own HUP reload of the same app under the same load.

    .venv/bin/python bench/fleet_apps.py [--hosts 2] [--clients 8] [--rate 25] [--boot 2]
                                         [--trace] [--no-hup]

Prints, for the fleet: requests, failed, steady p99 (before the publish) and the p99 of the
requests sent while each host restarted (its status' started_at .. converged_at); for the
HUP: steady p99 and the p99 of the requests sent in the 4 s after SIGHUP. --trace adds, per
host, the instances' life cycle (agent log, the app's "ready" lines) and the slowest requests,
in seconds since the publish.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout.local import LocalFleet, LocalFleetConfig
from shiptypes import ProviderContext, RolloutSettings
from tests.rollout.apps import FLASK_APP, app_release, gunicorn
from tests.rollout.loadgen import Load, Outcome


def p99(outcomes: list[Outcome]) -> float:
    latencies = sorted(o.latency for o in outcomes)
    return latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0


def monotonic_of(stamp: str) -> float:
    return time.monotonic() - (time.time() - datetime.fromisoformat(stamp).timestamp())


def line(name: str, load: Load, steady: list[Outcome], window: list[Outcome]) -> None:
    print(f"{name}: {len(load.outcomes)} requests, {len(load.failures())} failed; steady p99 "
          f"{p99(steady) * 1000:.0f} ms; in flight during restart: {len(window)} requests, "
          f"p99 {p99(window) * 1000:.0f} ms ({p99(window) / max(p99(steady), 1e-9):.2f}x)")


def fleet(args: argparse.Namespace, work: Path) -> None:
    context = ProviderContext(pipeline="bench", region="local", state_dir=work / ".ship")
    spec = gunicorn(3, BOOT_SECONDS=str(args.boot))
    settings = RolloutSettings(stagger=0.0, drain_timeout=10.0).running(spec)
    config = LocalFleetConfig(driver="local", hosts=args.hosts, workers=1,
                              root=str(work / "fleet"), boot_timeout=30.0)
    with LocalFleet(config, settings, context) as hosts:
        hosts.publish(app_release(work, context, "flask", 1))
        while not hosts.observe().done:
            time.sleep(0.1)
        with Load(hosts.host_urls, clients=args.clients, rate=args.rate) as load:
            time.sleep(5.0)
            publish = time.monotonic()
            hosts.publish(app_release(work, context, "flask", 2))
            while not hosts.observe().done:
                time.sleep(0.1)
            time.sleep(2.0)
        window = []
        for index, status in enumerate(hosts.statuses()):
            start, end = monotonic_of(status["started_at"]), monotonic_of(status["converged_at"])
            window += [o for o in load.between(start, end) if o.host == index]
        line(f"fleet ({args.hosts} hosts, 1 instance of gunicorn -w 3)", load,
             load.between(0, publish), window)
        if args.trace:
            trace(hosts, load, publish)


EVENT = re.compile(r"^(\S+) agent \d+: ((?:started|stopping) worker \d+.*|worker \d+ "
                   r"(?:healthy|exited).*)$|^ready (\S+) (\d+) at ([\d.]+)$", re.M)


def trace(hosts: LocalFleet, load: Load, publish: float) -> None:
    """Each host's instance life cycle and its slowest requests, in seconds since the
    publish: where the restart's p99 comes from."""
    wall = time.time() - (time.monotonic() - publish)
    for index, host in enumerate(hosts.hosts):
        logs = [(host.layout.root / "log" / name).read_text(errors="replace")
                for name in ("agent.log", "workers.log")]
        events = []
        for found in EVENT.finditer("\n".join(logs)):
            stamp = (datetime.fromisoformat(found[1]).timestamp() if found[1]
                     else float(found[5]))
            if stamp >= wall:
                events.append((stamp - wall, found[2] or f"ready {found[3]} pid {found[4]}"))
        print(f"  host {index}:")
        for at, what in sorted(events):
            print(f"    {at:7.3f} s  {what}")
        mine = sorted((o for o in load.between(publish) if o.host == index),
                      key=lambda o: -o.latency)
        print("    slowest: " + ", ".join(f"{o.started - publish:.3f}+{o.latency * 1000:.0f}ms "
                                          f"{o.method} {o.release}" for o in mine[:8]))


def hup(args: argparse.Namespace, work: Path) -> None:
    source = work / "hup"
    source.mkdir()
    (source / "app.py").write_text(FLASK_APP)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "BOOT_SECONDS": str(args.boot), "SHIP_RELEASE": "hup"}
    master = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", "3", "-b",
                               f"127.0.0.1:{port}", "app:app"], cwd=source, env=env,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(args.boot + 2.0)
        with Load([f"http://127.0.0.1:{port}"], clients=args.clients, rate=args.rate) as load:
            time.sleep(5.0)
            sent = time.monotonic()
            master.send_signal(signal.SIGHUP)
            time.sleep(args.boot + 4.0)
        line("gunicorn HUP (1 server, -w 3)", load, load.between(0, sent),
             load.between(sent, sent + 4.0))
    finally:
        master.terminate()
        master.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=float, default=25.0)
    parser.add_argument("--boot", type=float, default=2.0)
    parser.add_argument("--trace", action="store_true",
                        help="print each host's instance life cycle and slowest requests")
    parser.add_argument("--no-hup", action="store_true", help="skip gunicorn's HUP reload")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        fleet(args, Path(directory))
        if not args.no_hup:
            hup(args, Path(directory))


if __name__ == "__main__":
    main()
