"""Breach detection: pure functions on series, so every decision can be tested on data.

A breach is an outcome rate below `min_ratio` of its baseline for `windows` consecutive
windows (or above `max_ratio`, for rates that must not rise), counting only windows whose
baseline has at least `min_volume`. "No data" is its own verdict: never healthy, never a
breach.

A noisy baseline widens the bounds: a window is out of bounds only if it is also more than
`noise_sigmas` standard deviations of the baseline's own spread away from it (in log terms,
so a ratio). The spread is measured on the history alone, never on the watched series, so a
drop cannot excuse itself:
- seasonal baselines: the robust (MAD-based) standard deviation of log(one week / the median
  of the other weeks) at the same time, pooled over the last `spread_windows` windows. That
  is how far a normal week strays from a median of weeks, which is the comparison a breach
  makes; it holds count noise and news-driven swings alike. With a single history week
  (week_ago, or a series younger than its baseline) week-to-week spread is unknown, and the
  window-to-window noise of that week stands in for it.
- trailing baselines: the robust standard deviation of the trailing window around its median.
A stable metric keeps the plain ratio bounds; a news-driven one gets bounds it does not cross
by chance.

The defaults (below 60% for 2 windows, widened to 3 standard deviations of a spread pooled over
12 windows) catch a halved rate of 1000/min within 2 windows in 97% of watches (3 or 4
otherwise); on NAB's NYC taxi series against a 4-week median they flag Thanksgiving, Christmas
and the January blizzard with one other alarm every 7 weeks, and on the news-driven Twitter
series cut false alarms from about 65 to under 5 a week (under 2 once 4 weeks of history
exist). At 20/min, where count noise is about 22% a window, a halved rate takes longer to
stand out: `bench/detector_eval.py` measures all of these.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from pydantic import Field

from shiptypes import Point, ProviderConfig, Seconds, Series

WEEK = timedelta(days=7)
MAD_TO_SD = 1.4826  # a median absolute deviation times this estimates a normal SD


class Baseline(ProviderConfig):
    """What a metric is compared with: the trailing window before the release, the same time
    one week earlier, or the median of the same time over the last `weeks` weeks."""

    kind: Literal["trailing", "week_ago", "weeks_median"] = "trailing"
    window: Seconds = Field(1800.0, gt=0, description="length of a trailing baseline")
    weeks: int = Field(4, ge=1, le=12, description="weeks in a weeks_median baseline")
    spread_windows: int = Field(24, ge=1, description="recent windows pooled to measure how "
                                "far a seasonal baseline's weeks stray from one another")


class MetricRule(ProviderConfig):
    name: str = Field(min_length=1)
    query: str = Field(min_length=1)
    baseline: Baseline = Baseline()
    min_ratio: float = Field(0.6, gt=0, le=1, description="breach below this share of baseline")
    max_ratio: float | None = Field(None, gt=1, description="breach above this multiple")
    windows: int = Field(2, ge=1, description="consecutive windows out of bounds to breach")
    min_volume: float = Field(0.0, ge=0, description="ignore windows whose baseline is lower")
    noise_sigmas: float = Field(3.0, ge=0, description="a breach must also be this many "
                                "standard deviations of the baseline's spread away; 0: ratios only")


class Expected(float):
    """A baseline value that knows its spread: the robust standard deviation of the log
    ratio between a normal week and the baseline, None where it cannot be measured. A float,
    so whoever reads baselines as numbers (the watcher, charts) needs no change."""

    spread: float | None

    def __new__(cls, value: float, spread: float | None = None) -> Expected:
        expected = super().__new__(cls, value)
        expected.spread = spread
        return expected


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
        why = f": {self.reason}" if self.reason else ""
        return (f"{self.metric} {self.observed:,.0f}/min vs baseline {self.baseline:,.0f}/min "
                f"(threshold {self.threshold:,.0f}/min{why})")


def history_shifts(baseline: Baseline) -> list[timedelta]:
    """How far back each history series must be fetched for a seasonal baseline."""
    if baseline.kind == "week_ago":
        return [WEEK]
    if baseline.kind == "weeks_median":
        return [WEEK * k for k in range(1, baseline.weeks + 1)]
    return []


def baseline_values(observed: Series, history: Sequence[Series], baseline: Baseline,
                    step_s: float) -> list[float | None]:
    """The expected value for each observed point, as an `Expected` carrying its spread. For
    "trailing", `history` holds one series (the window before the release); for seasonal
    kinds, one series per shift, each already fetched at its shift."""
    if baseline.kind == "trailing":
        values = [p.value for series in history for p in series.points]
        if not values:
            return [None] * len(observed.points)
        level = statistics.median(values)
        spread = _robust_sd([_log_distance(v, level) for v in values])
        return [Expected(level, spread)] * len(observed.points)
    shifts = history_shifts(baseline)
    weekly = [[value_near(series.points, point.at - shift, step_s)
               for series, shift in zip(history, shifts, strict=False)]
              for point in observed.points]
    spreads = _pooled_spreads(weekly, baseline.spread_windows)
    expected: list[float | None] = []
    for weeks, spread in zip(weekly, spreads, strict=True):
        seen = [v for v in weeks if v is not None]
        expected.append(Expected(statistics.median(seen), spread) if seen else None)
    return expected


def value_near(points: Sequence[Point], at: datetime, step_s: float) -> float | None:
    """The value of the point within half a step of `at`, if any; `points` in time order."""
    index = bisect.bisect_left(points, at, key=lambda p: p.at)
    near = [p for p in points[max(0, index - 1): index + 1]
            if abs((p.at - at).total_seconds()) <= step_s / 2]
    best = min(near, key=lambda p: abs((p.at - at).total_seconds()), default=None)
    return None if best is None else best.value


# --- spread ---------------------------------------------------------------------------------


def _pooled_spreads(weekly: Sequence[Sequence[float | None]], span: int) -> list[float | None]:
    """For each window, the spread over the last `span` windows up to it (never after it, so
    a decision does not change as the watch goes on)."""
    pool: deque[list[float]] = deque(maxlen=span)
    spreads: list[float | None] = []
    for index, weeks in enumerate(weekly):
        pool.append(_deviations(weeks, weekly[max(0, index - 1): index]))
        spreads.append(_robust_sd([d for devs in pool for d in devs]))
    return spreads


def _deviations(weeks: Sequence[float | None],
                before: Sequence[Sequence[float | None]]) -> list[float]:
    """How far each week strays from the median of the others at this time. With a single
    week, how far it strays from its window before: for white noise that spreads as much as
    two independent weeks do, but it cannot see a week's level as a whole being off."""
    seen = [v for v in weeks if v is not None]
    if len(seen) >= 2:
        return [_log_distance(v, statistics.median(seen[:k] + seen[k + 1:]))
                for k, v in enumerate(seen)]
    return [_log_distance(now, back) for now, back in zip(weeks, before[-1], strict=True)
            if now is not None and back is not None] if before else []


def _log_distance(value: float, level: float) -> float:
    """|log(value / level)|; infinite when one of them is zero and the other is not."""
    if value <= 0 and level <= 0:
        return 0.0
    if value <= 0 or level <= 0:
        return math.inf
    return abs(math.log(value / level))


def _robust_sd(deviations: Sequence[float]) -> float | None:
    return MAD_TO_SD * statistics.median(deviations) if deviations else None


# --- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """One judged window: what was observed, what was expected, and the bounds it must keep
    (`high` None when the rule has no upper bound)."""

    at: datetime
    observed: float
    baseline: float
    low: float
    high: float | None


def bounds(rule: MetricRule, baseline: float) -> tuple[float, float | None]:
    """The effective (low, high) bounds around a baseline value: the rule's ratios, widened
    to `noise_sigmas` standard deviations of the baseline's spread when that is wider."""
    spread = getattr(baseline, "spread", None)
    width = rule.noise_sigmas * spread if spread is not None and rule.noise_sigmas else 0.0
    low = baseline * min(rule.min_ratio, math.exp(-width))  # exp(-inf) is 0: never below
    if rule.max_ratio is None:
        return low, None
    stretch = math.exp(width) if width < 700 else math.inf  # past 700, exp overflows
    return low, baseline * max(rule.max_ratio, stretch)


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
    return first or _decision("ok", rule, judged[-1:], "low")


def onsets(rule: MetricRule, observed: Series, expected: Sequence[float | None]) -> list[Decision]:
    """Every breach of a rule watching a series without pause: one decision when a run of
    out-of-bounds windows reaches `windows`; a breach resets once a window is back in bounds."""
    return list(_breaches(rule, judged_windows(rule, observed.points, expected)))


def _breaches(rule: MetricRule, judged: Sequence[Window]) -> Iterator[Decision]:
    low_run: list[Window] = []
    high_run: list[Window] = []
    for window in judged:
        low = window.observed < window.low
        high = window.high is not None and window.observed > window.high
        low_run = [*low_run[-rule.windows:], window] if low else []
        high_run = [*high_run[-rule.windows:], window] if high else []
        for run, side in ((low_run, "low"), (high_run, "high")):
            if len(run) == rule.windows:
                yield _decision("breach", rule, run, side)


def judged_windows(rule: MetricRule, points: Sequence[Point],
                   expected: Sequence[float | None]) -> list[Window]:
    """The windows the rule judges: those with a baseline of at least `min_volume`."""
    return [Window(p.at, p.value, b, *bounds(rule, b))
            for p, b in zip(points, expected, strict=False)
            if b is not None and b > 0 and b >= rule.min_volume]


def _decision(verdict: Literal["ok", "breach"], rule: MetricRule, run: Sequence[Window],
              side: Literal["low", "high"]) -> Decision:
    base = statistics.fmean(w.baseline for w in run)
    limits = [w.low if side == "low" else w.high for w in run]
    threshold = statistics.fmean(limit for limit in limits if limit is not None)
    return Decision(verdict, rule.name, observed=statistics.fmean(w.observed for w in run),
                    baseline=base, threshold=threshold, at=run[-1].at,
                    reason=_bound_reason(rule, side, threshold / base))


def _bound_reason(rule: MetricRule, side: Literal["low", "high"], share: float) -> str:
    """Where the threshold stands against the baseline, and why, so a message explains
    itself: "46% of baseline, widened from 60% for the baseline's spread"."""
    ratio = rule.min_ratio if side == "low" else rule.max_ratio or share
    said, rule_said = _ratio_text(share, side), _ratio_text(ratio, side)
    where = f"{said} of baseline" if side == "low" else f"{said} baseline"
    if said == rule_said:
        return where
    return f"{where}, widened from {rule_said} for the baseline's spread"


def _ratio_text(ratio: float, side: Literal["low", "high"]) -> str:
    return f"{ratio:.0%}" if side == "low" else f"{ratio:.2g}×"
