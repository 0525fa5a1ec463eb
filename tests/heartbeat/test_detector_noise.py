"""A noisy baseline widens the breach bounds; a stable one keeps the plain ratios; every
decision carries the bound it was held to."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from heartbeat.detector import (
    Baseline,
    Decision,
    MetricRule,
    baseline_values,
    bounds,
    detect,
    onsets,
)
from shiptypes import Point, Series

STEP = 60.0
RELEASE = datetime(2026, 3, 10, 14, 0, tzinfo=UTC)
WEEKLY = MetricRule(name="orders", query="q", baseline=Baseline(kind="weeks_median"))
RATIOS_ONLY = WEEKLY.model_copy(update={"noise_sigmas": 0.0})

# Four history weeks, each steady at 100·e^x: every week strays from the median of the
# others by 0.3, 0.2, 0.2 and 0.3 in log terms, so the spread is 1.4826 · 0.25 and the
# baseline the median of the weeks; by hand, not by the detector's own code.
LEVELS = [100 * math.exp(x) for x in (-0.2, -0.1, 0.1, 0.2)]
SPREAD = 1.4826 * 0.25
BASELINE = 100 * (math.exp(-0.1) + math.exp(0.1)) / 2
WIDE_LOW = math.exp(-3 * SPREAD)  # about 0.33 of baseline


def series(values: list[float], start: datetime = RELEASE) -> Series:
    return Series(tuple(Point(start + timedelta(seconds=STEP * (k + 1)), v)
                        for k, v in enumerate(values)))


def weeks(levels: list[float], windows: int) -> list[Series]:
    return [series([level] * windows, RELEASE - timedelta(days=7 * k))
            for k, level in enumerate(levels, start=1)]


def judge(rule: MetricRule, observed: Series, history: list[Series]) -> Decision:
    return detect(rule, observed, baseline_values(observed, history, rule.baseline, STEP))


def test_a_moderate_dip_against_a_noisy_baseline_is_no_breach() -> None:
    observed = series([0.45 * BASELINE] * 6)  # below 60%, inside the weeks' own spread
    assert judge(RATIOS_ONLY, observed, weeks(LEVELS, 6)).verdict == "breach"
    decision = judge(WEEKLY, observed, weeks(LEVELS, 6))
    assert decision.verdict == "ok"
    assert decision.threshold == pytest.approx(WIDE_LOW * BASELINE)


def test_a_collapse_against_a_noisy_baseline_breaches_at_the_widened_threshold() -> None:
    observed = series([0.2 * BASELINE] * 6)
    decision = judge(WEEKLY, observed, weeks(LEVELS, 6))
    assert decision.verdict == "breach"
    assert decision.at == observed.points[1].at
    assert decision.baseline == pytest.approx(BASELINE)
    assert decision.threshold == pytest.approx(WIDE_LOW * BASELINE)
    assert decision.observed < decision.threshold
    assert decision.explanation == (
        f"orders 20/min vs baseline 101/min (threshold {WIDE_LOW * BASELINE:.0f}/min: "
        "33% of baseline, widened from 60% for the baseline's spread)")


def test_the_same_dip_against_a_stable_baseline_breaches_at_the_plain_ratio() -> None:
    stable = [100 * math.exp(x) for x in (-0.01, -0.005, 0.005, 0.01)]
    observed = series([45.0] * 6)
    decision = judge(WEEKLY, observed, weeks(stable, 6))
    assert decision.verdict == "breach"
    assert decision.threshold == pytest.approx(0.6 * decision.baseline)
    assert decision.explanation.endswith("(threshold 60/min: 60% of baseline)")


def test_a_rise_is_judged_against_a_widened_upper_bound() -> None:
    rule = WEEKLY.model_copy(update={"max_ratio": 2.0})
    observed = series([2.5 * BASELINE] * 4)  # above 2×, inside e^(3·spread) ≈ 3.04×
    decision = judge(rule, observed, weeks(LEVELS, 4))
    assert decision.verdict == "ok"
    surge = judge(rule, series([4 * BASELINE] * 4), weeks(LEVELS, 4))
    assert surge.verdict == "breach"
    assert surge.threshold == pytest.approx(math.exp(3 * SPREAD) * BASELINE)
    assert "widened from 2×" in surge.explanation


def test_noise_sigmas_sets_how_wide_a_bound_may_go() -> None:
    expected = baseline_values(series([50.0]), weeks(LEVELS, 1), WEEKLY.baseline, STEP)[0]
    assert expected is not None
    assert bounds(WEEKLY, expected)[0] == pytest.approx(WIDE_LOW * BASELINE)
    half = WEEKLY.model_copy(update={"noise_sigmas": 1.0})
    assert bounds(half, expected)[0] == pytest.approx(0.6 * BASELINE)  # e^-0.37 > 0.6
    assert bounds(RATIOS_ONLY, expected)[0] == pytest.approx(0.6 * BASELINE)


def test_a_noisy_trailing_window_widens_its_bound() -> None:
    rule = MetricRule(name="orders", query="q")
    before = series([50.0, 150.0] * 15, RELEASE - timedelta(minutes=31))
    # |log(v / 100)| is 0.69 or 0.41: the spread is 1.4826 · 0.55
    low = math.exp(-3 * 1.4826 * (math.log(2) + math.log(1.5)) / 2) * 100
    decision = judge(rule, series([30.0] * 5), [before])
    assert (decision.verdict, decision.baseline) == ("ok", 100.0)
    assert decision.threshold == pytest.approx(low)
    assert judge(rule, series([5.0] * 5), [before]).verdict == "breach"


def test_a_single_jumpy_history_week_widens_the_bound_a_smooth_one_does_not() -> None:
    rule = MetricRule(name="orders", query="q", baseline=Baseline(kind="week_ago"))
    jumpy = [series([100.0, 180.0] * 5, RELEASE - timedelta(days=7))]
    smooth = [series([100.0, 101.0] * 5, RELEASE - timedelta(days=7))]
    observed = series([50.0] * 10)
    assert judge(rule, observed, smooth).verdict == "breach"
    assert judge(rule, observed, jumpy).verdict == "ok"


def test_a_zero_in_the_history_week_makes_the_window_unjudgeable_below() -> None:
    """A baseline that is zero as often as not has no meaningful lower bound."""
    levels = [0.0, 0.0, 100.0, 100.0]
    expected = baseline_values(series([10.0]), weeks(levels, 1), WEEKLY.baseline, STEP)[0]
    assert expected is not None and expected == 50.0
    assert bounds(WEEKLY, expected)[0] == 0.0


def test_a_decision_does_not_change_as_the_watch_goes_on() -> None:
    """The spread of a window is measured on history up to it, never after it."""
    noise = random.Random(3)
    history = [series([100 * math.exp(noise.gauss(0, 0.3)) for _ in range(20)],
                      RELEASE - timedelta(days=7 * k)) for k in range(1, 5)]
    observed = series([100.0] * 4 + [20.0] * 16)
    early = judge(WEEKLY, Series(observed.points[:6]), history)
    late = judge(WEEKLY, observed, history)
    assert early.verdict == "breach" and late == early


def poisson_like(rate: float, windows: int, start: datetime, seed: int,
                 factor: float = 1.0) -> Series:
    """Counts per window at `rate`: the noise a quiet metric really has (sd √rate)."""
    noise = random.Random(seed)
    level = rate * factor
    return series([max(0.0, round(level + noise.gauss(0, math.sqrt(level or 1.0))))
                   for _ in range(windows)], start)


def test_count_noise_at_a_quiet_rate_does_not_breach_a_healthy_release() -> None:
    breached = {"noise": 0, "ratios": 0}
    for seed in range(40):
        history = [poisson_like(20, 20, RELEASE - timedelta(days=7 * k), seed * 10 + k)
                   for k in range(1, 5)]
        observed = poisson_like(20, 20, RELEASE, seed * 10)
        breached["noise"] += judge(WEEKLY, observed, history).verdict == "breach"
        breached["ratios"] += judge(RATIOS_ONLY, observed, history).verdict == "breach"
    assert breached["noise"] == 0
    assert breached["noise"] <= breached["ratios"]


def test_an_outage_at_a_quiet_rate_still_breaches_at_its_second_window() -> None:
    history = [poisson_like(20, 10, RELEASE - timedelta(days=7 * k), k) for k in range(1, 5)]
    observed = poisson_like(20, 10, RELEASE, 0, factor=0.0)
    decision = judge(WEEKLY, observed, history)
    assert decision.verdict == "breach"
    assert decision.at == observed.points[1].at


def test_onsets_use_the_widened_bounds() -> None:
    values = [0.45 * BASELINE] * 3 + [BASELINE] + [0.2 * BASELINE] * 3
    observed = series(values)
    expected = baseline_values(observed, weeks(LEVELS, len(values)), WEEKLY.baseline, STEP)
    assert [b.at for b in onsets(WEEKLY, observed, expected)] == [observed.points[5].at]
    assert len(onsets(RATIOS_ONLY, observed, expected)) == 2


def test_configs_without_the_new_fields_still_load_and_typos_are_refused() -> None:
    old = MetricRule.model_validate({"name": "m", "query": "q", "min_ratio": 0.5,
                                     "baseline": {"kind": "weeks_median", "weeks": 3}})
    assert (old.noise_sigmas, old.baseline.spread_windows) == (3.0, 24)
    assert (old.baseline.min_weeks, old.baseline.needed_weeks, old.baseline.fallback) == (
        None, 3, "trailing")
    tuned = MetricRule.model_validate({"name": "m", "query": "q", "noise_sigmas": 0,
                                       "baseline": {"kind": "week_ago", "spread_windows": 6}})
    assert (tuned.noise_sigmas, tuned.baseline.spread_windows) == (0.0, 6)
    with pytest.raises(ValidationError):
        MetricRule.model_validate({"name": "m", "query": "q", "noise_sigma": 2})
    with pytest.raises(ValidationError):
        MetricRule.model_validate({"name": "m", "query": "q", "noise_sigmas": -1})
