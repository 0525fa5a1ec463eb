"""Breach detection: pure functions on series, so every decision can be tested on data.

A breach is an outcome rate below `min_ratio` of its baseline for `windows` consecutive
windows (or above `max_ratio`, for rates that must not rise), counting only windows whose
baseline has at least `min_volume`. "No data" is its own verdict: never healthy, never a
breach.

A seasonal baseline judges a window only where `min_weeks` of its weeks have data (3 of
weeks_median's 4 by default). On NAB's Twitter series, judged on whatever history there is, a
week with one week of history behind it had 21 (AAPL) and 10 (GOOG) false alarms, with two 5
and 1, with three 1 and 2, and 3.9 weeks with all four 1 and 0: one week cannot show how far a
whole week strays, and few weeks show it poorly. Asking for 3 keeps the judged weeks under 1
false alarm a week with one week less of fallback than asking for 4. Where history is
shorter, the watcher judges against the trailing window instead, or holds, as the rule's
`fallback` says (heartbeat/watcher.py). week_ago judges on its single week, as it always has:
a rule that picks it asks for that comparison (a metric steady week to week).

A noisy baseline widens the bounds: a window is out of bounds only if it is also more than
`noise_sigmas` standard deviations of the baseline's own spread away from it (in log terms,
so a ratio). The spread is measured on the history alone, never on the watched series, so a
drop cannot excuse itself:
- seasonal baselines: the robust (MAD-based) standard deviation of log(one week / the median
  of the other weeks) at the same time, pooled over the last `spread_windows` windows. That
  is how far a normal week strays from a median of weeks, which is the comparison a breach
  makes; it holds count noise and news-driven swings alike. With a single history week
  (week_ago) week-to-week spread is unknown, and the window-to-window noise of that week
  stands in for it.
- trailing baselines: the robust standard deviation of the trailing window around its median.
A stable metric keeps the plain ratio bounds; a news-driven one gets bounds it does not cross
by chance.

The defaults (below 60% for 2 windows, widened to 3 standard deviations of a spread pooled over
24 windows, judged where 3 of 4 weeks have data) catch a halved rate of 1000/min within 2
windows in 97% of watches (3 or 4 otherwise: count noise, or a bound widened by the spread of
a watch's first windows, pooled from few of them). Where they judge, on NAB's NYC taxi series
against a 4-week median they flag Thanksgiving, Christmas and the January blizzard with 0.18
false alarms a week, and on the news-driven Twitter series they cut false alarms from about 66
to 0.41 a week. The trailing fallback in those series' first 3 weeks raises 9 (AAPL) and 13
(GOOG) a week: it keeps a young metric watched, not quiet. At 20/min, where count noise is
about 22% a window, a halved rate takes longer to stand out: `bench/detector_eval.py`
measures all of these.
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

from pydantic import Field, model_validator

from shiptypes import Point, ProviderConfig, Seconds, Series

WEEK = timedelta(days=7)
MIN_WEEKS = 3  # weeks a seasonal baseline needs by default: see above
MAD_TO_SD = 1.4826  # a median absolute deviation times this estimates a normal SD


def history_shifts(baseline: Baseline) -> list[timedelta]:
    """How far back each history series must be fetched for a seasonal baseline."""
    if baseline.kind == "week_ago":
        return [WEEK]
    if baseline.kind == "weeks_median":
        return [WEEK * k for k in range(1, baseline.weeks + 1)]
    return []


class Baseline(ProviderConfig):
    """What a metric is compared with: the trailing window before the release, the same time
    one week earlier, or the median of the same time over the last `weeks` weeks.

    A seasonal baseline judges a window only where `min_weeks` of its weeks have data there.
    Where it lacks them (a young metric, a source keeping less history than asked), the
    watcher follows `fallback`: judge against the trailing `window` before the release, or
    hold (no data). week_ago has one week by nature and judges on it. A trailing baseline
    has no weeks: `weeks`, `min_weeks` and `fallback` do not apply to it."""

    kind: Literal["trailing", "week_ago", "weeks_median"] = "trailing"
    window: Seconds = Field(1800.0, gt=0, description="length of a trailing baseline, and of "
                            "the trailing fallback of a seasonal one")
    weeks: int = Field(4, ge=1, le=12, description="weeks in a weeks_median baseline")
    min_weeks: int | None = Field(None, ge=1, le=12, description="weeks with data a seasonal "
                                  "baseline needs to judge a window (default: 3 of weeks_median's "
                                  "weeks, or all when fewer; week_ago's one)")
    fallback: Literal["trailing", "hold"] = Field("trailing", description="where a seasonal "
                                                  "baseline lacks min_weeks: judge against the "
                                                  "trailing window, or hold (no data)")
    spread_windows: int = Field(24, ge=1, le=10_000,
                                description="recent windows pooled to measure how "
                                "far a seasonal baseline's weeks stray from one another")

    @model_validator(mode="after")
    def _min_weeks_within_reach(self) -> Baseline:
        held = len(history_shifts(self))
        if self.min_weeks is not None and held and self.min_weeks > held:
            raise ValueError(f"min_weeks {self.min_weeks} is more than the {held} week(s) a "
                             f"{self.kind} baseline compares with")
        return self

    @property
    def needed_weeks(self) -> int:
        """The weeks with data a seasonal baseline needs at a window to judge it (0: trailing)."""
        held = len(history_shifts(self))
        if not held or self.min_weeks is None:
            return min(held, MIN_WEEKS)
        return self.min_weeks


class MetricRule(ProviderConfig):
    name: str = Field(min_length=1)
    query: str = Field(min_length=1)
    baseline: Baseline = Baseline()
    min_ratio: float = Field(0.6, gt=0, le=1, description="breach below this share of baseline")
    max_ratio: float | None = Field(None, gt=1, le=1000,
                                    description="breach above this multiple")
    windows: int = Field(2, ge=1, le=1000,
                         description="consecutive windows out of bounds to breach")
    min_volume: float = Field(0.0, ge=0, le=1e15,
                              description="ignore windows whose baseline is lower")
    noise_sigmas: float = Field(3.0, ge=0, le=100, description="a breach must also be this many "
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


def baseline_values(observed: Series, history: Sequence[Series], baseline: Baseline,
                    step_s: float) -> list[float | None]:
    """The expected value for each observed point, as an `Expected` carrying its spread. For
    "trailing", `history` holds one series (the window before the release); for seasonal
    kinds, one series per shift, each already fetched at its shift. A seasonal baseline has
    no value (None) where fewer than `needed_weeks` of its weeks have data."""
    if baseline.kind == "trailing":
        values = [p.value for series in history for p in series.points]
        if not values:
            return [None] * len(observed.points)
        level = statistics.median(values)
        spread = _robust_sd([_log_distance(v, level) for v in values])
        return [Expected(level, spread)] * len(observed.points)
    weekly = _weekly(observed, history, baseline, step_s)
    spreads = _pooled_spreads(weekly, baseline.spread_windows)
    needed = max(baseline.needed_weeks, 1)
    expected: list[float | None] = []
    for weeks, spread in zip(weekly, spreads, strict=True):
        seen = [v for v in weeks if v is not None]
        expected.append(Expected(statistics.median(seen), spread) if len(seen) >= needed
                        else None)
    return expected


def weeks_present(observed: Series, history: Sequence[Series], baseline: Baseline,
                  step_s: float) -> list[int]:
    """For each observed point, how many of a seasonal baseline's weeks have data there."""
    return [sum(v is not None for v in weeks)
            for weeks in _weekly(observed, history, baseline, step_s)]


def _weekly(observed: Series, history: Sequence[Series], baseline: Baseline,
            step_s: float) -> list[list[float | None]]:
    """For each observed point, the value of each history week at the same time, if any."""
    shifts = history_shifts(baseline)
    return [[value_near(series.points, point.at - shift, step_s)
             for series, shift in zip(history, shifts, strict=False)]
            for point in observed.points]


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
