"""Breach detection: pure functions on series, so every decision can be tested on data.

A breach is an outcome rate below `min_ratio` of its baseline for `windows` consecutive
windows (or above `max_ratio`, for rates that must not rise), counting only windows whose
baseline has at least `min_volume`. "No data" is its own verdict: never healthy, never a
breach.

The defaults (below 60% for 2 windows) catch a halved rate in 2 windows, and on NAB's NYC
taxi series, against a weekly baseline, flag Thanksgiving, Christmas and the January
blizzard with about one other alarm a month: `bench/detector_eval.py` measures both.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from pydantic import Field

from shiptypes import Point, ProviderConfig, Seconds, Series

WEEK = timedelta(days=7)


class Baseline(ProviderConfig):
    """What a metric is compared with: the trailing window before the release, the same time
    one week earlier, or the median of the same time over the last `weeks` weeks."""

    kind: Literal["trailing", "week_ago", "weeks_median"] = "trailing"
    window: Seconds = Field(1800.0, gt=0, description="length of a trailing baseline")
    weeks: int = Field(4, ge=1, le=12, description="weeks in a weeks_median baseline")


class MetricRule(ProviderConfig):
    name: str = Field(min_length=1)
    query: str = Field(min_length=1)
    baseline: Baseline = Baseline()
    min_ratio: float = Field(0.6, gt=0, le=1, description="breach below this share of baseline")
    max_ratio: float | None = Field(None, gt=1, description="breach above this multiple")
    windows: int = Field(2, ge=1, description="consecutive windows out of bounds to breach")
    min_volume: float = Field(0.0, ge=0, description="ignore windows whose baseline is lower")


@dataclass(frozen=True)
class Decision:
    verdict: Literal["ok", "breach", "no_data"]
    metric: str
    observed: float = 0.0
    baseline: float = 0.0
    threshold: float = 0.0
    at: datetime | None = None
    reason: str = ""

    @property
    def explanation(self) -> str:
        if self.verdict == "no_data":
            return f"{self.metric}: no data ({self.reason})"
        return (f"{self.metric} {self.observed:,.0f}/min vs baseline {self.baseline:,.0f}/min "
                f"(threshold {self.threshold:,.0f}/min)")


def history_shifts(baseline: Baseline) -> list[timedelta]:
    """How far back each history series must be fetched for a seasonal baseline."""
    if baseline.kind == "week_ago":
        return [WEEK]
    if baseline.kind == "weeks_median":
        return [WEEK * k for k in range(1, baseline.weeks + 1)]
    return []


def baseline_values(observed: Series, history: Sequence[Series], baseline: Baseline,
                    step_s: float) -> list[float | None]:
    """The expected value for each observed point. For "trailing", `history` holds one
    series (the window before the release); for seasonal kinds, one series per shift, each
    already fetched at its shift."""
    if baseline.kind == "trailing":
        values = [p.value for series in history for p in series.points]
        level = statistics.median(values) if values else None
        return [level] * len(observed.points)
    shifts = history_shifts(baseline)
    expected: list[float | None] = []
    for point in observed.points:
        seen = [v for series, shift in zip(history, shifts, strict=False)
                if (v := value_near(series.points, point.at - shift, step_s)) is not None]
        expected.append(statistics.median(seen) if seen else None)
    return expected


def value_near(points: Sequence[Point], at: datetime, step_s: float) -> float | None:
    """The value of the point within half a step of `at`, if any; `points` in time order."""
    index = bisect.bisect_left(points, at, key=lambda p: p.at)
    near = [p for p in points[max(0, index - 1): index + 1]
            if abs((p.at - at).total_seconds()) <= step_s / 2]
    best = min(near, key=lambda p: abs((p.at - at).total_seconds()), default=None)
    return None if best is None else best.value


@dataclass(frozen=True)
class Window:
    """One judged window: what was observed and what was expected."""

    at: datetime
    observed: float
    baseline: float


def detect(rule: MetricRule, observed: Series, expected: Sequence[float | None]) -> Decision:
    """The verdict on a watch: the first breach in it, else ok on its latest window."""
    if observed.no_data:
        return Decision("no_data", rule.name, reason=observed.error or "empty series")
    if not any(e is not None for e in expected):
        return Decision("no_data", rule.name, reason="no baseline to compare with")
    judged = judged_windows(rule, observed.points, expected)
    if not judged:
        return Decision("no_data", rule.name, reason=f"baseline below min_volume {rule.min_volume}")
    first = next(_breaches(rule, judged), None)
    return first or _decision("ok", rule, judged[-1:], rule.min_ratio)


def onsets(rule: MetricRule, observed: Series, expected: Sequence[float | None]) -> list[Decision]:
    """Every breach of a rule watching a series without pause: one decision when a run of
    out-of-bounds windows reaches `windows`; a breach resets once a window is back in bounds."""
    return list(_breaches(rule, judged_windows(rule, observed.points, expected)))


def _breaches(rule: MetricRule, judged: Sequence[Window]) -> Iterator[Decision]:
    low_run: list[Window] = []
    high_run: list[Window] = []
    for window in judged:
        low = window.observed < rule.min_ratio * window.baseline
        high = rule.max_ratio is not None and window.observed > rule.max_ratio * window.baseline
        low_run = [*low_run[-rule.windows:], window] if low else []
        high_run = [*high_run[-rule.windows:], window] if high else []
        for run, ratio in ((low_run, rule.min_ratio), (high_run, rule.max_ratio)):
            if ratio is not None and len(run) == rule.windows:
                yield _decision("breach", rule, run, ratio)


def judged_windows(rule: MetricRule, points: Sequence[Point],
                   expected: Sequence[float | None]) -> list[Window]:
    """The windows the rule judges: those with a baseline of at least `min_volume`."""
    return [Window(p.at, p.value, b) for p, b in zip(points, expected, strict=False)
            if b is not None and b > 0 and b >= rule.min_volume]


def _decision(verdict: Literal["ok", "breach"], rule: MetricRule, run: Sequence[Window],
              ratio: float) -> Decision:
    base = statistics.fmean(w.baseline for w in run)
    return Decision(verdict, rule.name, observed=statistics.fmean(w.observed for w in run),
                    baseline=base, threshold=base * ratio, at=run[-1].at)
