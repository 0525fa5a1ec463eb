"""One look at the heartbeat: fetch each metric since the release went live, with its
baseline, and decide. The orchestrator loops over this for the watch time and acts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from heartbeat.detector import Decision, MetricRule, baseline_values, detect, history_shifts
from shiptypes import MetricSource, Series


@dataclass(frozen=True)
class Verdict:
    decisions: tuple[Decision, ...]

    @property
    def breach(self) -> Decision | None:
        return next((d for d in self.decisions if d.verdict == "breach"), None)

    @property
    def no_data(self) -> Decision | None:
        return next((d for d in self.decisions if d.verdict == "no_data"), None)

    @property
    def healthy(self) -> bool:
        return all(d.verdict == "ok" for d in self.decisions)


def look(source: MetricSource, rules: Sequence[MetricRule], since: datetime, now: datetime,
         step_s: float) -> Verdict:
    return Verdict(tuple(_look_at(source, rule, since, now, step_s) for rule in rules))


def _look_at(source: MetricSource, rule: MetricRule, since: datetime, now: datetime,
             step_s: float) -> Decision:
    observed = fetch_or_no_data(source, rule.query, since, now, step_s)
    if rule.baseline.kind == "trailing":
        window = timedelta(seconds=rule.baseline.window)
        history = [fetch_or_no_data(source, rule.query, since - window, since, step_s)]
    else:
        history = [fetch_or_no_data(source, rule.query, since - shift, now - shift, step_s)
                   for shift in history_shifts(rule.baseline)]
    decision = detect(rule, observed, baseline_values(observed, history, rule.baseline, step_s))
    failed = [series.error for series in history if series.error]
    if decision.verdict == "no_data" and not observed.no_data and len(failed) == len(history):
        return replace(decision, reason=f"baseline: {failed[0]}")
    return decision


def fetch_or_no_data(source: MetricSource, query: str, start: datetime, end: datetime,
           step_s: float) -> Series:
    """A source that raises is a source with no data: never healthy."""
    try:
        return source.fetch(query, start, end, step_s)
    except Exception as error:  # any failure of a source means no data
        return Series(error=f"{type(error).__name__}: {error}")
