"""How well does the heartbeat detector catch drops, and how often does it cry wolf?

    .venv/bin/python bench/detector_eval.py [--data DIR] [--trials N]

Every section compares the rule judging by ratios alone (noise_sigmas 0, the detector before
it measured its baseline's spread) with the default, noise-aware rule.

1. NAB series with labeled anomalies (DIR defaults to /work/shared/data/nab, else the copy
   in tests/heartbeat/data). The detector watches each series without pause against a
   weekly-seasonal baseline; every breach onset is an alarm. It prints, per series, the
   labeled drops caught and missed, alarms inside labeled windows that are not drops (NAB
   labels spikes too), and false alarms (outside every labeled window), total and per week,
   split by whether every baseline week was there (a young series has fewer weeks of history
   than the baseline asks for, and one week says nothing about week-to-week spread).
2. A holdout: noise_sigmas and spread_windows tuned on nyc_taxi and Twitter_volume_AAPL only,
   then the other series judged with the tuned values.
3. Releases replayed on NAB at quiet times, each a single look at the end of a short watch.
4. Synthetic heartbeats (a steady rate with a daily and weekly shape and noise), watched
   through `heartbeat.watcher.look` like a release: the delay in windows until a 50%, 30%
   or 10% drop breaches, and how many watches of a healthy release breach anyway, at a busy
   rate (1000/min) and at a quiet one (20/min, where count noise is about 22% a window).

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
    value_near,
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
TUNING = SERIES[:2]  # the holdout tunes on these and judges the others
SIGMAS = (2.0, 2.5, 3.0, 3.5, 4.0)
SPANS = (6, 12, 24)
WEEK = timedelta(days=7)
WEEK_S = WEEK.total_seconds()


# --- NAB ------------------------------------------------------------------------------------


@dataclass
class Watched:
    """A NAB series watched without pause: its points, expected values, and how many of the
    baseline's weeks each point had."""

    name: str
    points: list[Point]
    expected: list[float | None]
    depth: list[int]
    labeled: list[tuple[datetime, datetime]]

    @property
    def step_s(self) -> float:
        return (self.points[1].at - self.points[0].at).total_seconds()


@dataclass
class Score:
    caught: dict[str, datetime]
    missed: list[str]
    other_labeled: int
    false_full: int  # false alarms where every baseline week was there
    false_young: int  # where fewer weeks were
    weeks_full: float
    weeks_young: float

    @property
    def false_alarms(self) -> int:
        return self.false_full + self.false_young

    @property
    def weeks(self) -> float:
        return self.weeks_full + self.weeks_young


def load(path: Path) -> list[Point]:
    with path.open() as file:
        return [Point(datetime.fromisoformat(row["timestamp"]), float(row["value"]))
                for row in csv.DictReader(file)]


def labeled_windows(data: Path) -> dict[str, list[tuple[datetime, datetime]]]:
    labels = data / "combined_windows.json"
    raw = json.loads(labels.read_text())
    return {name: [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in spans]
            for name, spans in raw.items()}


def watched(data: Path, name: str, baseline: Baseline) -> Watched | None:
    path = data / Path(name).name
    if not path.exists():
        return None
    points = load(path)
    step = (points[1].at - points[0].at).total_seconds()
    whole = Series(tuple(points))
    shifts = history_shifts(baseline)
    expected = baseline_values(whole, [whole] * len(shifts), baseline, step)
    depth = [sum(value_near(points, p.at - shift, step) is not None for shift in shifts)
             for p in points]
    return Watched(name, points, expected, depth, labeled_windows(data).get(name, []))


def score(rule: MetricRule, series: Watched) -> Score:
    breaches = onsets(rule, Series(tuple(series.points)), series.expected)
    index = {p.at: k for k, p in enumerate(series.points)}
    full = len(history_shifts(rule.baseline))
    drops = DROPS.get(series.name, {})
    caught: dict[str, datetime] = {}
    other = false_full = false_young = 0
    for at in (b.at for b in breaches if b.at is not None):
        inside = next(((a, b) for a, b in series.labeled if a <= at <= b), None)
        label = drops.get(str(inside[0])) if inside else None
        if label:
            caught.setdefault(label, at)
        elif inside:
            other += 1
        elif series.depth[index[at]] >= full:
            false_full += 1
        else:
            false_young += 1
    judged = [d for e, d in zip(series.expected, series.depth, strict=True) if e is not None]
    week = series.step_s / WEEK_S
    missed = [label for label in drops.values() if label not in caught]
    return Score(caught, missed, other, false_full, false_young,
                 sum(d >= full for d in judged) * week, sum(d < full for d in judged) * week)


def per_week(count: int, weeks: float) -> str:
    return f"{count / weeks:.2f}" if weeks > 0.05 else "-"


def nab(data: Path, rules: dict[str, MetricRule]) -> None:
    baseline = next(iter(rules.values())).baseline
    print(f"NAB ({data}), baseline {baseline.kind} of {len(history_shifts(baseline))} week(s), "
          "watched without pause; false alarms split by weeks of history at the alarm")
    print(f"  {'series':<38} {'rule':<12} {'drops':>6} {'other':>5} {'false':>5} "
          f"{'weeks':>5} {'false/week':>10} {'all weeks':>14} {'fewer weeks':>14}")
    for name in SERIES:
        series = watched(data, name, baseline)
        if series is None:
            continue
        for label, rule in rules.items():
            result = score(rule, series)
            total = len(result.caught) + len(result.missed)
            drops = f"{len(result.caught)}/{total}" if total else "-"
            full = f"{result.false_full} in {result.weeks_full:.1f}w"
            young = f"{result.false_young} in {result.weeks_young:.1f}w"
            print(f"  {Path(name).name:<38} {label:<12} {drops:>6} {result.other_labeled:>5} "
                  f"{result.false_alarms:>5} {result.weeks:>5.1f} "
                  f"{per_week(result.false_alarms, result.weeks):>10} {full:>14} {young:>14}")
            for missed in result.missed:
                print(f"      MISSED {missed}")
        caught = score(next(reversed(rules.values())), series).caught
        for label, at in caught.items():
            print(f"      caught {label}: first alarm {at:%Y-%m-%d %H:%M}")


# --- holdout --------------------------------------------------------------------------------


def holdout(data: Path, rule: MetricRule) -> None:
    """Tune noise_sigmas and spread_windows on the tuning series only; judge the others."""
    print(f"Holdout: tuned on {', '.join(Path(n).stem for n in TUNING)}; the smallest "
          "noise_sigmas that keeps every labeled drop and brings the tuning Twitter series under "
          "1 false alarm/week where all weeks of history exist, then the spread_windows with the "
          "fewest false alarms there")
    names = "  ".join(f"{Path(n).stem:>30}" for n in TUNING)
    print(f"  {'sigmas':>6} {'spread':>6}  {names}")
    grid: dict[tuple[float, int], list[Score]] = {}
    for span in SPANS:
        baseline = rule.baseline.model_copy(update={"spread_windows": span})
        tuning = [s for n in TUNING if (s := watched(data, n, baseline)) is not None]
        for sigmas in SIGMAS:
            tuned = rule.model_copy(update={"baseline": baseline, "noise_sigmas": sigmas})
            grid[sigmas, span] = [score(tuned, series) for series in tuning]
    for (sigmas, span), scores in sorted(grid.items()):
        cells = [f"{len(r.caught)}/{len(r.caught) + len(r.missed)} drops, "
                 f"{per_week(r.false_alarms, r.weeks)}/w, all weeks "
                 f"{per_week(r.false_full, r.weeks_full)}/w" for r in scores]
        print(f"  {sigmas:>6g} {span:>6}  " + "  ".join(f"{c:>30}" for c in cells))
    chosen = _tuned(grid)
    if chosen is None:
        print("  no setting reaches the target on the tuning series")
        return
    sigmas, span = chosen
    tuned = rule.model_copy(update={"noise_sigmas": sigmas, "baseline": rule.baseline.model_copy(
        update={"spread_windows": span})})
    print(f"  tuned: noise_sigmas {sigmas:g}, spread_windows {span}; the held-out series:")
    for name in SERIES[len(TUNING):]:
        series = watched(data, name, tuned.baseline)
        if series is None:
            continue
        result = score(tuned, series)
        print(f"    {Path(name).name:<38} false {result.false_alarms:>3} in "
              f"{result.weeks:.1f} weeks ({per_week(result.false_alarms, result.weeks)}/w); all "
              f"weeks of history {result.false_full} in {result.weeks_full:.1f}w, fewer "
              f"{result.false_young} in {result.weeks_young:.1f}w")


def _tuned(grid: dict[tuple[float, int], list[Score]]) -> tuple[float, int] | None:
    def fit(scores: list[Score]) -> bool:
        return all(not r.missed and r.false_full <= r.weeks_full for r in scores)

    for sigmas in SIGMAS:
        fitting = [span for span in SPANS if fit(grid[sigmas, span])]
        if fitting:
            return sigmas, min(fitting, key=lambda span: sum(r.false_alarms
                                                             for r in grid[sigmas, span]))
    return None


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


def synthetic(rules: dict[str, MetricRule], trials: int, rate: float,
              watch_windows: int = 20) -> None:
    step_s = 60.0
    origin = datetime(2026, 3, 2, tzinfo=UTC)
    print(f"  rate {rate:g}/min, jitter 5%, {watch_windows}-window watch, {trials} releases:")
    for label, rule in rules.items():
        print(f"    {label}:")
        for drop in (0.5, 0.3, 0.1, 0.0):
            delays: list[int] = []
            for trial in range(trials):
                source = Heartbeat(rate, 0.05, seed=trial)
                source.release = origin + timedelta(days=28, minutes=random.Random(
                    trial).randrange(7 * 24 * 60))
                source.drop = drop
                delay = watch(source, rule, source.release, step_s, watch_windows)
                if delay is not None:
                    delays.append(delay)
            print(f"      {_delays(drop, delays, trials, rule.windows)}")


def _delays(drop: float, delays: list[int], trials: int, windows: int) -> str:
    if not drop:
        return f"no drop:  {len(delays)}/{trials} healthy releases breached"
    quick = sum(d <= windows for d in delays)
    summary = (f"median {statistics.median(delays):g}, max {max(delays)} windows; "
               f"{quick}/{trials} within {windows}" if delays else "never")
    return f"{drop:>4.0%} drop: caught {len(delays)}/{trials}; delay {summary}"


def releases(data: Path, rules: dict[str, MetricRule], count: int, watch_windows: int) -> None:
    windows = labeled_windows(data)
    kinds = {"weeks_median": Baseline(kind="weeks_median"), "week_ago": Baseline(kind="week_ago"),
             f"trailing {watch_windows} windows": None}
    print(f"Releases replayed on NAB at random quiet times (outside labeled windows): "
          f"{watch_windows}-window watches that breach")
    print(f"  {'series':<38} {'rule':<12} " + " ".join(f"{k:>20}" for k in kinds))
    for name in SERIES:
        path = data / Path(name).name
        if not path.exists():
            continue
        points = load(path)
        step = (points[1].at - points[0].at).total_seconds()
        for label, rule in rules.items():
            cells = []
            for baseline in kinds.values():
                chosen = baseline or Baseline(kind="trailing", window=step * watch_windows)
                breached, watched_ = replayed(rule.model_copy(update={"baseline": chosen}),
                                              points, windows.get(name, []), count,
                                              watch_windows)
                cells.append(f"{breached:>4}/{watched_:<4} {breached / max(watched_, 1):>6.1%}")
            print(f"  {Path(name).name:<38} {label:<12} " + " ".join(f"{c:>20}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED if SHARED.exists() else COPY)
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    began = time.monotonic()
    noisy = MetricRule(name="heartbeat", query="q", baseline=Baseline(kind="weeks_median"))
    rules = {"ratio only": noisy.model_copy(update={"noise_sigmas": 0.0}),
             f"noise {noisy.noise_sigmas:g}σ": noisy}
    print(f"Rules: below {noisy.min_ratio:.0%} of baseline for {noisy.windows} windows; "
          f"'ratio only' has noise_sigmas 0, '{list(rules)[1]}' the defaults (noise_sigmas "
          f"{noisy.noise_sigmas:g}, spread_windows {noisy.baseline.spread_windows})")
    nab(args.data, rules)
    week_ago = Baseline(kind="week_ago")
    nab(args.data, {k: r.model_copy(update={"baseline": week_ago}) for k, r in rules.items()})
    holdout(args.data, noisy)
    releases(args.data, rules, count=args.trials, watch_windows=6)
    print("Synthetic, baseline weeks_median")
    synthetic(rules, args.trials, rate=1000)
    synthetic(rules, args.trials, rate=20)
    print(f"took {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()
