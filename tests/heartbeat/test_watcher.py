"""One look at the heartbeat: what the watcher fetches and what it concludes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from heartbeat import SOURCES
from heartbeat.detector import Baseline, MetricRule
from heartbeat.watcher import look
from shiptypes import MetricSource, Point, Series

RELEASE = datetime(2026, 3, 4, 15, 0, tzinfo=UTC)
NOW = RELEASE + timedelta(minutes=5)
STEP = 60.0


class Recorded:
    """A source answering from a function of time; it records what it was asked."""

    def __init__(self, value: Callable[[datetime], float]) -> None:
        self.value = value
        self.asked: list[tuple[str, datetime, datetime]] = []

    def fetch(self, query: str, start: datetime, end: datetime, step_s: float) -> Series:
        self.asked.append((query, start, end))
        count = int((end - start).total_seconds() // step_s)
        return Series(tuple(Point(start + timedelta(seconds=step_s * (k + 1)),
                                  self.value(start + timedelta(seconds=step_s * (k + 1))))
                            for k in range(count)))


class Raising:
    def fetch(self, query: str, start: datetime, end: datetime, step_s: float) -> Series:
        raise ConnectionResetError("the metrics API hung up")


def broken_after_release(at: datetime) -> float:
    return 300.0 if at > RELEASE else 1000.0


def test_a_raising_source_is_no_data_never_healthy() -> None:
    verdict = look(Raising(), [MetricRule(name="messages", query="q")], RELEASE, NOW, STEP)
    assert not verdict.healthy and verdict.breach is None
    assert verdict.no_data is not None
    assert verdict.no_data.reason == "ConnectionResetError: the metrics API hung up"


def test_a_drop_after_the_release_is_a_breach_against_the_trailing_window() -> None:
    source = Recorded(broken_after_release)
    rule = MetricRule(name="messages", query="sum:messages", baseline=Baseline(window=1800))
    verdict = look(source, [rule], RELEASE, NOW, STEP)
    assert verdict.breach is not None
    assert (verdict.breach.observed, verdict.breach.baseline) == (300.0, 1000.0)
    assert ("sum:messages", RELEASE - timedelta(minutes=30), RELEASE) in source.asked


def test_seasonal_baselines_fetch_the_same_span_weeks_earlier() -> None:
    source = Recorded(lambda at: 1000.0)
    rule = MetricRule(name="messages", query="q", baseline=Baseline(kind="weeks_median", weeks=3))
    verdict = look(source, [rule], RELEASE, NOW, STEP)
    assert verdict.healthy
    shifts = [timedelta(days=7 * k) for k in range(1, 4)]
    assert source.asked == [("q", RELEASE, NOW)] + [("q", RELEASE - s, NOW - s) for s in shifts]


def test_a_baseline_that_cannot_be_fetched_is_no_data_with_its_reason() -> None:
    class HistoryDown(Recorded):
        def fetch(self, query: str, start: datetime, end: datetime, step_s: float) -> Series:
            if start < RELEASE:
                return Series(error="HTTP 503 from the metrics API")
            return super().fetch(query, start, end, step_s)

    verdict = look(HistoryDown(lambda at: 1000.0), [MetricRule(name="m", query="q")],
                   RELEASE, NOW, STEP)
    assert verdict.no_data is not None
    assert verdict.no_data.reason == "baseline: HTTP 503 from the metrics API"


class Young(Recorded):
    """A metric first recorded at `born`: nothing before it."""

    def __init__(self, value: Callable[[datetime], float], born: datetime) -> None:
        super().__init__(value)
        self.born = born

    def fetch(self, query: str, start: datetime, end: datetime, step_s: float) -> Series:
        recorded = super().fetch(query, start, end, step_s)
        return Series(tuple(p for p in recorded.points if p.at >= self.born))


SEASONAL = MetricRule(name="messages", query="q", baseline=Baseline(kind="weeks_median"))
TEN_DAYS_OLD = RELEASE - timedelta(days=10)  # one week of history of the four


def test_short_seasonal_history_falls_back_to_the_trailing_window_and_says_so() -> None:
    source = Young(broken_after_release, born=TEN_DAYS_OLD)
    verdict = look(source, [SEASONAL], RELEASE, NOW, STEP)
    assert verdict.breach is not None
    assert (verdict.breach.observed, verdict.breach.baseline) == (300.0, 1000.0)
    assert verdict.breach.reason.endswith(
        "seasonal history 1 of 4 weeks (needs 3): trailing 30 min baseline")
    assert "trailing 30 min baseline" in verdict.breach.explanation
    assert ("q", RELEASE - timedelta(minutes=30), RELEASE) in source.asked

    healthy = look(Young(lambda at: 1000.0, born=TEN_DAYS_OLD), [SEASONAL], RELEASE, NOW, STEP)
    assert healthy.healthy
    assert "seasonal history 1 of 4 weeks" in healthy.decisions[0].reason


def test_three_weeks_of_four_are_enough_to_judge_seasonally() -> None:
    source = Young(broken_after_release, born=RELEASE - timedelta(days=22))
    verdict = look(source, [SEASONAL], RELEASE, NOW, STEP)
    assert verdict.breach is not None
    assert "seasonal history" not in verdict.breach.reason
    assert all(start >= RELEASE - timedelta(days=28) for _, start, _ in source.asked)
    assert ("q", RELEASE - timedelta(minutes=30), RELEASE) not in source.asked


def test_short_seasonal_history_holds_when_the_rule_asks_to() -> None:
    rule = SEASONAL.model_copy(update={"baseline": Baseline(kind="weeks_median",
                                                            fallback="hold")})
    source = Young(broken_after_release, born=TEN_DAYS_OLD)
    verdict = look(source, [rule], RELEASE, NOW, STEP)
    assert verdict.breach is None and not verdict.healthy
    assert verdict.no_data is not None
    assert verdict.no_data.explanation == (
        "messages: no data (seasonal history 1 of 4 weeks (needs 3): held until it has them)")
    assert ("q", RELEASE - timedelta(minutes=30), RELEASE) not in source.asked


def test_history_that_cannot_be_fetched_counts_as_short_and_the_reason_says_why() -> None:
    class OldWeeksDown(Recorded):
        def fetch(self, query: str, start: datetime, end: datetime, step_s: float) -> Series:
            if start < RELEASE - timedelta(days=10):
                raise TimeoutError("range query timed out")
            return super().fetch(query, start, end, step_s)

    verdict = look(OldWeeksDown(broken_after_release), [SEASONAL], RELEASE, NOW, STEP)
    assert verdict.breach is not None
    assert verdict.breach.reason.endswith(
        "seasonal history 1 of 4 weeks (needs 3; TimeoutError: range query timed out): "
        "trailing 30 min baseline")


def test_a_fallback_without_a_trailing_window_is_no_data_with_both_reasons() -> None:
    source = Young(broken_after_release, born=RELEASE + timedelta(seconds=1))  # born with it
    verdict = look(source, [SEASONAL], RELEASE, NOW, STEP)
    assert verdict.no_data is not None
    assert verdict.no_data.reason == ("no baseline to compare with; seasonal history 0 of 4 "
                                      "weeks (needs 3): trailing 30 min baseline")


def test_every_rule_is_judged() -> None:
    source = Recorded(broken_after_release)
    rules = [MetricRule(name="errors", query="e", min_ratio=0.1),
             MetricRule(name="messages", query="m")]
    verdict = look(source, rules, RELEASE, NOW, STEP)
    assert [d.verdict for d in verdict.decisions] == ["ok", "breach"]
    assert verdict.breach is not None and verdict.breach.metric == "messages"


def test_every_registered_source_speaks_the_protocol() -> None:
    from shiptypes import ProviderContext

    samples = {"datadog": {}, "prometheus": {"url": "http://127.0.0.1:9"},
               "local": {"urls": ["http://127.0.0.1:9"]}, "sim": {}}
    for config, kind in SOURCES.items():
        name = config.model_fields["type"].annotation.__args__[0]
        source = kind(config(type=name, **samples[name]), ProviderContext("us", "us-east-1"))
        assert isinstance(source, MetricSource)


def test_importing_heartbeat_leaves_the_heavy_clients_unloaded() -> None:
    probe = ("import sys, heartbeat; "
             "print(sorted(m for m in ('datadog_api_client', 'requests') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2]).stdout
    assert out.strip() == "[]"
