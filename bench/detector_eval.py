"""How well does the heartbeat detector catch drops, and how often does it cry wolf?

    .venv/bin/python bench/detector_eval.py [--data DIR] [--trials N]

1. NAB series with labeled anomalies (DIR defaults to /work/shared/data/nab, else the copy
   in tests/heartbeat/data). The detector watches each series without pause against a
   weekly-seasonal baseline; every breach onset is an alarm. It prints, per series, the
   labeled drops caught and missed, alarms inside labeled windows that are not drops (NAB
   labels spikes too), and false alarms (outside every labeled window), total and per week.
2. Synthetic heartbeats (a steady rate with a daily and weekly shape and noise), watched
   through `heartbeat.watcher.look` like a release: the delay in windows until a 50%, 30%
   or 10% drop breaches, and how many watches of a healthy release breach anyway.

Figures only, no asserts: tests/heartbeat holds the asserted behaviour.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from heartbeat.detector import (  # noqa: E402
    Baseline,
    MetricRule,
    baseline_values,
    history_shifts,
    onsets,
)
from heartbeat.watcher import look  # noqa: E402
from shiptypes import Point, Series  # noqa: E402

SHARED = Path("/work/shared/data/nab")
COPY = ROOT / "tests" / "heartbeat" / "data"
# The labeled windows that are drops, after the NAB subset's README (the others are spikes
# or mixed); keyed by the window's start.
DROPS = {
    "realKnownCause/nyc_taxi.csv": {
        "2014-11-25 12:00:00": "Thanksgiving",
        "2014-12-23 11:30:00": "Christmas",
        "2015-01-24 20:30:00": "blizzard",
    },
}
SERIES = [
    "realKnownCause/nyc_taxi.csv",
    "realTweets/Twitter_volume_AAPL.csv",
    "realTweets/Twitter_volume_GOOG.csv",
    "realKnownCause/ec2_request_latency_system_failure.csv",
    "realAWSCloudwatch/ec2_network_in_257a54.csv",
]
WEEK = timedelta(days=7)
WEEK_S = WEEK.total_seconds()


# --- NAB ------------------------------------------------------------------------------------


@dataclass
class Score:
    caught: dict[str, datetime]
    missed: list[str]
    other_labeled: int
    false_alarms: int
    weeks: float


def load(path: Path) -> list[Point]:
    with path.open() as file:
        return [Point(datetime.fromisoformat(row["timestamp"]), float(row["value"]))
                for row in csv.DictReader(file)]


def labeled_windows(data: Path) -> dict[str, list[tuple[datetime, datetime]]]:
    labels = data / "combined_windows.json"
    raw = json.loads(labels.read_text())
    return {name: [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in spans]
            for name, spans in raw.items()}


def alarms(rule: MetricRule, points: list[Point]) -> tuple[list[datetime], int]:
    """Breach onsets when the rule watches the series without pause, and how many windows
    had a baseline to judge."""
    step = (points[1].at - points[0].at).total_seconds()
    whole = Series(tuple(points))
    history = [whole] * len(history_shifts(rule.baseline))
    expected = baseline_values(whole, history, rule.baseline, step)
    breaches = onsets(rule, whole, expected)
    return [b.at for b in breaches if b.at is not None], sum(e is not None for e in expected)


def score(name: str, rule: MetricRule, points: list[Point],
          windows: list[tuple[datetime, datetime]]) -> Score:
    onsets, judged = alarms(rule, points)
    drops = DROPS.get(name, {})
    caught: dict[str, datetime] = {}
    other = false = 0
    for at in onsets:
        inside = next(((a, b) for a, b in windows if a <= at <= b), None)
        label = drops.get(str(inside[0])) if inside else None
        if label:
            caught.setdefault(label, at)
        elif inside:
            other += 1
        else:
            false += 1
    step = (points[1].at - points[0].at).total_seconds()
    missed = [label for label in drops.values() if label not in caught]
    return Score(caught, missed, other, false, judged * step / WEEK_S)


def nab(data: Path, rule: MetricRule) -> None:
    windows = labeled_windows(data)
    print(f"NAB ({data}), baseline {rule.baseline.kind} of {rule.baseline.weeks} weeks, "
          f"min_ratio {rule.min_ratio}, windows {rule.windows}")
    print(f"  {'series':<40} {'drops caught':>12} {'missed':>6} {'in other':>8} "
          f"{'false':>5} {'weeks':>5} {'false/week':>10}")
    for name in SERIES:
        path = data / Path(name).name
        if not path.exists():
            continue
        result = score(name, rule, load(path), windows.get(name, []))
        total = len(result.caught) + len(result.missed)
        print(f"  {Path(name).name:<40} {len(result.caught):>5} of {total:<4} "
              f"{len(result.missed):>6} {result.other_labeled:>8} {result.false_alarms:>5} "
              f"{result.weeks:>5.1f} {result.false_alarms / result.weeks:>10.2f}")
        for label, at in result.caught.items():
            print(f"      caught {label}: first alarm {at:%Y-%m-%d %H:%M}")
        for label in result.missed:
            print(f"      MISSED {label}")


# --- releases replayed on NAB ---------------------------------------------------------------


class Replay:
    """A MetricSource over a recorded series: the points in (start, end]."""

    def __init__(self, points: list[Point]) -> None:
        self.points = points

    def fetch(self, query: str, start: datetime, end: datetime, step_s: float) -> Series:
        low = bisect.bisect_right(self.points, start, key=lambda p: p.at)
        high = bisect.bisect_right(self.points, end, key=lambda p: p.at)
        return Series(tuple(self.points[low:high]))


def replayed(rule: MetricRule, points: list[Point], windows: list[tuple[datetime, datetime]],
             releases: int, watch_windows: int) -> tuple[int, int]:
    """(breached, watched): watches of releases at random quiet times (no labeled anomaly
    during the watch or its trailing window), each a single look at the end of the watch."""
    step = points[1].at - points[0].at
    window = timedelta(seconds=rule.baseline.window)
    lead = max([window, *history_shifts(rule.baseline)[:1]])  # at least a week of history
    pick = random.Random(len(points))
    breached = watched = 0
    for _ in range(releases * 20):
        if watched == releases:
            break
        at = pick.choice(points).at
        end = at + step * watch_windows
        if at - lead < points[0].at or end > points[-1].at:
            continue
        if any(a <= end and at - window <= b for a, b in windows):
            continue
        watched += 1
        verdict = look(Replay(points), [rule], at, end, step.total_seconds())
        breached += verdict.breach is not None
    return breached, watched


# --- synthetic ------------------------------------------------------------------------------


class Heartbeat:
    """A rate per minute with a daily swell, quieter weekends and noise (Poisson-like plus a
    relative jitter), that falls by `drop` from `release` on."""

    def __init__(self, rate: float, jitter: float, seed: int) -> None:
        self.rate, self.jitter, self.seed = rate, jitter, seed
        self.release: datetime | None = None
        self.drop = 0.0

    def fetch(self, query: str, start: datetime, end: datetime, step_s: float) -> Series:
        points, at = [], start + timedelta(seconds=step_s)
        while at <= end:
            points.append(Point(at, self.value(at)))
            at += timedelta(seconds=step_s)
        return Series(tuple(points))

    def value(self, at: datetime) -> float:
        hour = at.hour + at.minute / 60
        level = self.rate * (1 + 0.3 * math.sin(2 * math.pi * (hour - 9) / 24))
        level *= 0.75 if at.weekday() >= 5 else 1.0
        if self.release is not None and at > self.release:
            level *= 1 - self.drop
        noise = random.Random(hash((self.seed, int(at.timestamp()))))
        spread = math.sqrt(level + (level * self.jitter) ** 2)
        return max(0.0, level + noise.gauss(0, 1) * spread)


def watch(source: Heartbeat, rule: MetricRule, release: datetime, step_s: float,
          windows: int) -> int | None:
    """Windows after the release until the first breach, or None within the watch. One
    look at the end of the watch is enough: a breach is decided at the first run."""
    end = release + timedelta(seconds=windows * step_s)
    breach = look(source, [rule], release, end, step_s).breach
    if breach is None or breach.at is None:
        return None
    return round((breach.at - release).total_seconds() / step_s)


def synthetic(rule: MetricRule, trials: int, rate: float, watch_windows: int = 20) -> None:
    step_s = 60.0
    origin = datetime(2026, 3, 2, tzinfo=UTC)
    print(f"  rate {rate:g}/min, jitter 5%, {watch_windows}-window watch, {trials} releases:")
    for drop in (0.5, 0.3, 0.1, 0.0):
        delays: list[int] = []
        for trial in range(trials):
            source = Heartbeat(rate, 0.05, seed=trial)
            source.release = origin + timedelta(days=28, minutes=random.Random(trial).randrange(
                7 * 24 * 60))
            source.drop = drop
            delay = watch(source, rule, source.release, step_s, watch_windows)
            if delay is not None:
                delays.append(delay)
        caught = len(delays)
        if drop:
            quick = sum(d <= rule.windows for d in delays)
            summary = (f"median {statistics.median(delays):g}, max {max(delays)} windows; "
                       f"{quick}/{trials} within {rule.windows}" if delays else "never")
            print(f"    {drop:>4.0%} drop: caught {caught}/{trials}; delay {summary}")
        else:
            print(f"    no drop:  {caught}/{trials} healthy releases breached")


def releases(data: Path, rule: MetricRule, count: int, watch_windows: int) -> None:
    windows = labeled_windows(data)
    kinds = {"weeks_median": Baseline(kind="weeks_median"), "week_ago": Baseline(kind="week_ago"),
             f"trailing {watch_windows} windows": None}
    print(f"Releases replayed on NAB at random quiet times (outside labeled windows): "
          f"{watch_windows}-window watches that breach")
    print(f"  {'series':<40} " + " ".join(f"{k:>20}" for k in kinds))
    for name in SERIES:
        path = data / Path(name).name
        if not path.exists():
            continue
        points = load(path)
        step = (points[1].at - points[0].at).total_seconds()
        cells = []
        for baseline in kinds.values():
            chosen = baseline or Baseline(kind="trailing", window=step * watch_windows)
            breached, watched = replayed(rule.model_copy(update={"baseline": chosen}), points,
                                         windows.get(name, []), count, watch_windows)
            cells.append(f"{breached:>4}/{watched:<4} {breached / max(watched, 1):>6.1%}")
        print(f"  {Path(name).name:<40} " + " ".join(f"{c:>20}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED if SHARED.exists() else COPY)
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    began = time.monotonic()
    rule = MetricRule(name="heartbeat", query="q", baseline=Baseline(kind="weeks_median"))
    nab(args.data, rule)
    nab(args.data, rule.model_copy(update={"baseline": Baseline(kind="week_ago")}))
    releases(args.data, rule, count=args.trials, watch_windows=6)
    print(f"Synthetic, baseline weeks_median, min_ratio {rule.min_ratio}, "
          f"windows {rule.windows}")
    synthetic(rule, args.trials, rate=1000)
    synthetic(rule, args.trials, rate=20)
    print(f"took {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()
