"""One look at the heartbeat: fetch each metric since the release went live, with its
baseline, and decide. The orchestrator loops over this for the watch time and acts.

A seasonal baseline whose history is short anywhere in the look (fewer than the rule's
`min_weeks` of its weeks have data: a young metric, a source keeping less history) does not
judge it. The rule's `fallback` says what happens instead: the look is judged against the
trailing window before the release, and the decision's reason says so; or it is no data,
which holds the pipeline. Either way the rule is never silently blind."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from heartbeat.detector import (
    Decision,
    MetricRule,
    baseline_values,
    detect,
    history_shifts,
    weeks_present,
)
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


@dataclass(frozen=True)
class Expectation:
    """What a look compares a metric with: a value per observed point, the history it came
    from, and, where that is not the rule's own baseline, why (`held`: nothing to judge on)."""

    values: list[float | None]
    history: list[Series]
    note: str = ""
    held: bool = False


def look(source: MetricSource, rules: Sequence[MetricRule], since: datetime, now: datetime,
         step_s: float) -> Verdict:
    return Verdict(tuple(_look_at(source, rule, since, now, step_s) for rule in rules))


def _look_at(source: MetricSource, rule: MetricRule, since: datetime, now: datetime,
             step_s: float) -> Decision:
    observed = fetch_or_no_data(source, rule.query, since, now, step_s)
    expected = expectation(source, rule, observed, since, now, step_s)
    if expected.held:
        return Decision("no_data", rule.name, reason=expected.note)
    decision = detect(rule, observed, expected.values)
    failed = [series.error for series in expected.history if series.error]
    if (decision.verdict == "no_data" and not observed.no_data
            and len(failed) == len(expected.history)):
        decision = replace(decision, reason=f"baseline: {failed[0]}")
    if expected.note:
        decision = replace(decision, reason=f"{decision.reason}; {expected.note}")
    return decision


def expectation(source: MetricSource, rule: MetricRule, observed: Series, since: datetime,
                now: datetime, step_s: float) -> Expectation:
    """The baseline a look at `observed` (fetched from `since` to `now`) is judged against:
    the rule's own, or its fallback where seasonal history is short."""
    baseline = rule.baseline
    if baseline.kind == "trailing":
        return _trailing(source, rule, observed, since, step_s)
    history = [fetch_or_no_data(source, rule.query, since - shift, now - shift, step_s)
               for shift in history_shifts(baseline)]
    present = min(weeks_present(observed, history, baseline, step_s), default=None)
    if present is None or present >= baseline.needed_weeks:
        return Expectation(baseline_values(observed, history, baseline, step_s), history)
    failed = next((series.error for series in history if series.error), None)
    short = (f"seasonal history {present} of {len(history)} weeks (needs "
             f"{baseline.needed_weeks}{'; ' + failed if failed else ''})")
    if baseline.fallback == "hold":
        return Expectation([None] * len(observed.points), history,
                           f"{short}: held until it has them", held=True)
    trailing = _trailing(source, rule, observed, since, step_s)
    return replace(trailing, note=f"{short}: trailing {baseline.window / 60:g} min baseline")


def _trailing(source: MetricSource, rule: MetricRule, observed: Series, since: datetime,
              step_s: float) -> Expectation:
    window = timedelta(seconds=rule.baseline.window)
    history = [fetch_or_no_data(source, rule.query, since - window, since, step_s)]
    trailing = rule.baseline.model_copy(update={"kind": "trailing"})
    return Expectation(baseline_values(observed, history, trailing, step_s), history)


def fetch_or_no_data(source: MetricSource, query: str, start: datetime, end: datetime,
           step_s: float) -> Series:
    """A source that raises is a source with no data: never healthy."""
    try:
        return source.fetch(query, start, end, step_s)
    except Exception as error:  # any failure of a source means no data
        return Series(error=f"{type(error).__name__}: {error}")
