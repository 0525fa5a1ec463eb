"""The detector on real data (NAB's NYC taxi series, with labeled holiday drops) and on
synthetic heartbeats with known drops."""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from heartbeat.detector import (
    Baseline,
    Decision,
    MetricRule,
    baseline_values,
    detect,
    history_shifts,
    onsets,
)
from shiptypes import Point, Series

DATA = Path(__file__).parent / "data"
NYC = "realKnownCause/nyc_taxi.csv"
AAPL = "realTweets/Twitter_volume_AAPL.csv"
DROPS = {"Thanksgiving": "2014-11-25 12:00:00", "Christmas": "2014-12-23 11:30:00",
         "blizzard": "2015-01-24 20:30:00"}
STEP = 60.0
WEEK = timedelta(days=7)


def nab(name: str) -> list[Point]:
    with (DATA / Path(name).name).open() as file:
        return [Point(datetime.fromisoformat(r["timestamp"]), float(r["value"]))
                for r in csv.DictReader(file)]


def labeled_windows(name: str) -> list[tuple[datetime, datetime]]:
    spans = json.loads((DATA / "combined_windows.json").read_text())[name]
    return [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in spans]


@dataclass
class WatchedWithoutPause:
    """A NAB series watched from its first point to its last: the breach onsets, and the
    weeks the rule judged (windows with a baseline)."""

    breaches: list[Decision]
    expected: list[float | None]
    weeks_judged: float

    def false_alarms(self, windows: list[tuple[datetime, datetime]]) -> list[Decision]:
        return [b for b in self.breaches
                if b.at and not any(a <= b.at <= z for a, z in windows)]


def watched_without_pause(rule: MetricRule, points: list[Point]) -> WatchedWithoutPause:
    whole = Series(tuple(points))
    step = (points[1].at - points[0].at).total_seconds()
    history = [whole] * len(history_shifts(rule.baseline))
    expected = baseline_values(whole, history, rule.baseline, step)
    judged = sum(e is not None for e in expected) * timedelta(seconds=step) / WEEK
    return WatchedWithoutPause(onsets(rule, whole, expected), expected, judged)


@pytest.mark.parametrize("kind", ["weeks_median", "week_ago"])
def test_nyc_taxi_holiday_drops_are_caught_with_few_false_alarms(kind: str) -> None:
    points = nab(NYC)
    rule = MetricRule(name="passengers", query="taxi", baseline=Baseline(kind=kind))
    watch = watched_without_pause(rule, points)
    windows = labeled_windows(NYC)

    def window_of(at: datetime) -> tuple[datetime, datetime] | None:
        return next(((a, b) for a, b in windows if a <= at <= b), None)

    caught = {str(w[0]) for b in watch.breaches if b.at and (w := window_of(b.at))}
    assert set(DROPS.values()) <= caught
    assert len(watch.false_alarms(windows)) / watch.weeks_judged <= 1.0
    for breach in watch.breaches:  # every decision says what it saw against what, and why
        assert breach.observed < breach.threshold <= 0.6 * breach.baseline * (1 + 1e-9)
        widened = breach.threshold < 0.595 * breach.baseline
        assert ("widened from 60%" in breach.explanation) == widened


def test_a_seasonal_baseline_does_not_judge_the_weeks_short_of_history() -> None:
    """Twitter AAPL, news-driven: judged on one or two weeks of history the rule cries wolf
    many times a week; needing 3 of 4 weeks, it leaves those weeks to the watcher's fallback
    and stays under one false alarm a week where it judges."""
    points = nab(AAPL)
    windows = labeled_windows(AAPL)
    rule = MetricRule(name="tweets", query="aapl", baseline=Baseline(kind="weeks_median"))
    watch = watched_without_pause(rule, points)
    judged_from = next(p.at for p, e in zip(points, watch.expected, strict=True) if e is not None)
    assert points[0].at + 3 * WEEK <= judged_from < points[0].at + 3 * WEEK + timedelta(hours=1)
    assert all(e is not None for p, e in zip(points, watch.expected, strict=True)
               if p.at >= judged_from + timedelta(hours=1))
    assert watch.weeks_judged > 4.5
    assert len(watch.false_alarms(windows)) / watch.weeks_judged <= 1.0

    anyhow = rule.model_copy(update={"baseline": Baseline(kind="weeks_median", min_weeks=1)})
    young = [b for b in watched_without_pause(anyhow, points).false_alarms(windows)
             if b.at and b.at < judged_from]
    assert len(young) / 2 > 5  # the two weeks with 1 or 2 weeks of history behind them


def test_min_weeks_defaults_to_3_of_the_weeks_and_cannot_ask_for_more_than_there_are() -> None:
    assert Baseline(kind="weeks_median").needed_weeks == 3
    assert Baseline(kind="weeks_median", weeks=2).needed_weeks == 2  # older configs still load
    assert Baseline(kind="weeks_median", weeks=8, min_weeks=6).needed_weeks == 6
    assert Baseline(kind="week_ago").needed_weeks == 1
    assert Baseline(kind="trailing").needed_weeks == 0
    with pytest.raises(ValidationError, match="min_weeks 5 is more than the 4 week"):
        MetricRule.model_validate({"name": "m", "query": "q",
                                   "baseline": {"kind": "weeks_median", "min_weeks": 5}})
    with pytest.raises(ValidationError, match="min_weeks 2 is more than the 1 week"):
        Baseline(kind="week_ago", min_weeks=2)
    with pytest.raises(ValidationError):
        Baseline(kind="weeks_median", fallback="skip")


def heartbeat(start: datetime, windows: int, rate: float = 1000.0, seed: int = 1,
              drop_at: int | None = None, factor: float = 0.5) -> Series:
    """A rate per minute with a daily swell, quieter weekends and ~3% noise; from window
    `drop_at` on it runs at `factor` of itself."""
    noise = random.Random(seed)
    points = []
    for k in range(windows):
        at = start + timedelta(seconds=STEP * k)
        level = rate * (1 + 0.3 * math.sin(2 * math.pi * at.hour / 24))
        level *= 0.8 if at.weekday() >= 5 else 1.0
        if drop_at is not None and k >= drop_at:
            level *= factor
        points.append(Point(at, level * (1 + noise.gauss(0, 0.03))))
    return Series(tuple(points))


RELEASE = datetime(2026, 3, 14, 17, 0, tzinfo=UTC)  # a Saturday evening


def weeks_before(windows: int, rate: float = 1000.0) -> list[Series]:
    return [heartbeat(RELEASE - timedelta(days=7 * k), windows, rate, seed=k)
            for k in range(1, 5)]


def judge(rule: MetricRule, observed: Series, history: list[Series]) -> Decision:
    return detect(rule, observed, baseline_values(observed, history, rule.baseline, STEP))


SEASONAL = MetricRule(name="messages", query="q", baseline=Baseline(kind="weeks_median"))


@pytest.mark.parametrize("factor", [0.5, 0.2, 0.0])
def test_a_drop_breaches_at_its_second_window(factor: float) -> None:
    observed = heartbeat(RELEASE, 20, drop_at=5, factor=factor, seed=9)
    decision = judge(SEASONAL, observed, weeks_before(20))
    assert decision.verdict == "breach"
    assert decision.at == observed.points[6].at
    assert decision.observed == pytest.approx(factor * decision.baseline, abs=0.1 * 1000)
    assert "threshold" in decision.explanation


def test_a_steady_heartbeat_with_its_daily_and_weekly_shape_never_breaches() -> None:
    for seed in range(20):
        observed = heartbeat(RELEASE + timedelta(hours=5 * seed), 30, seed=100 + seed)
        history = [heartbeat(RELEASE + timedelta(hours=5 * seed, days=-7 * k), 30, seed=k)
                   for k in range(1, 5)]
        assert judge(SEASONAL, observed, history).verdict == "ok"


def test_a_shallow_drop_above_min_ratio_is_not_a_breach() -> None:
    observed = heartbeat(RELEASE, 20, drop_at=2, factor=0.8, seed=3)
    assert judge(SEASONAL, observed, weeks_before(20)).verdict == "ok"


def test_one_low_window_alone_is_not_a_breach() -> None:
    observed = heartbeat(RELEASE, 10, seed=4)
    points = list(observed.points)
    points[5] = Point(points[5].at, 0.0)
    assert judge(SEASONAL, Series(tuple(points)), weeks_before(10)).verdict == "ok"


def test_max_ratio_breaches_on_a_rise_only_when_asked() -> None:
    observed = heartbeat(RELEASE, 10, drop_at=3, factor=3.0, seed=5)
    assert judge(SEASONAL, observed, weeks_before(10)).verdict == "ok"
    bounded = SEASONAL.model_copy(update={"max_ratio": 2.0})
    decision = judge(bounded, observed, weeks_before(10))
    assert decision.verdict == "breach"
    assert decision.threshold == pytest.approx(2.0 * decision.baseline)
    assert decision.observed > decision.threshold


def test_min_volume_ignores_quiet_windows() -> None:
    quiet = heartbeat(RELEASE, 10, rate=20, drop_at=2, factor=0.1, seed=6)
    history = weeks_before(10, rate=20)
    assert judge(SEASONAL, quiet, history).verdict == "breach"
    guarded = SEASONAL.model_copy(update={"min_volume": 50})
    decision = judge(guarded, quiet, history)
    assert decision.verdict == "no_data"
    assert "min_volume" in decision.reason


def test_trailing_baseline_is_the_median_before_the_release() -> None:
    rule = MetricRule(name="messages", query="q")
    before = Series(tuple(Point(RELEASE - timedelta(minutes=m), v)
                          for m, v in zip(range(30, 0, -1), [100.0] * 29 + [5000.0], strict=True)))
    after = Series(tuple(Point(RELEASE + timedelta(minutes=m), 55.0) for m in range(1, 4)))
    decision = judge(rule, after, [before])
    assert (decision.verdict, decision.baseline, decision.threshold) == ("breach", 100.0, 60.0)


@pytest.mark.parametrize("observed", [Series(error="HTTP 500 from the source"), Series()])
def test_no_data_is_never_healthy(observed: Series) -> None:
    decision = judge(SEASONAL, observed, weeks_before(5))
    assert decision.verdict == "no_data"
    assert decision.explanation.startswith("messages: no data")


def test_no_baseline_is_no_data() -> None:
    observed = heartbeat(RELEASE, 5)
    decision = judge(SEASONAL, observed, [Series(error="down")] * 4)
    assert (decision.verdict, decision.reason) == ("no_data", "no baseline to compare with")


def test_a_breach_resets_once_the_rate_recovers() -> None:
    rule = MetricRule(name="m", query="q", windows=2)
    values = [100, 40, 40, 40, 100, 30, 30, 100, 30]
    observed = Series(tuple(Point(RELEASE + timedelta(minutes=k), float(v))
                            for k, v in enumerate(values)))
    breaches = onsets(rule, observed, [100.0] * len(values))
    assert [b.at for b in breaches] == [observed.points[2].at, observed.points[6].at]
