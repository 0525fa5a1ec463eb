"""Small helpers the metric sources share: adding up the series of a grouped answer, and
keeping error text short."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime

from shiptypes import Point, Series

ERROR_CHARS = 300


def at_seconds(moment: datetime) -> float:
    """Unix seconds of a pipeline time; a naive time is read as UTC."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.timestamp()


def summed(pairs: Iterable[tuple[float, object]], what: str) -> Series:
    """One series from the (unix seconds, value) pairs of every series in an answer, added
    up per timestamp; null and non-finite values are gaps, not zeros."""
    totals: dict[float, float] = {}
    for seconds, raw in pairs:
        try:
            value = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            totals[seconds] = totals.get(seconds, 0.0) + value
    if not totals:
        return Series(error=f"{what}: the answer holds no data points")
    return Series(tuple(Point(datetime.fromtimestamp(seconds, UTC), value)
                        for seconds, value in sorted(totals.items())))


def brief(text: object) -> str:
    """Error text short enough for a Slack message."""
    words = " ".join(str(text).split())
    return words if len(words) <= ERROR_CHARS else words[: ERROR_CHARS - 1] + "…"


def failure(error: BaseException) -> str:
    """A transport failure in a few words: urllib3 wraps the real cause (a refused
    connection, a DNS failure) in MaxRetryError, and requests wraps that again."""
    cause: BaseException = error
    for _ in range(3):
        inner = cause.args[0] if cause.args and isinstance(cause.args[0], BaseException) else None
        inner = getattr(cause, "reason", None) if inner is None else inner
        if not isinstance(inner, BaseException):
            break
        cause = inner
    return f"{type(cause).__name__}: {brief(cause)}"
