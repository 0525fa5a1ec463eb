"""Datadog as a heartbeat source: the v1 metrics query API (GET /api/v1/query) through
datadog-api-client.

Keys come from DD_API_KEY and DD_APP_KEY in the pipeline's environment, the site from the
config's `site` or DD_SITE there. A query without its own `.rollup(...)` gets one per window;
with `rollup: sum` (counts, e.g. `.as_count()`) each window becomes a rate per minute.
Only whole windows inside [start, end - settle] are kept: a window still filling (or still
arriving at Datadog) would read as a drop. Every failure is a Series with `error`: no data,
never healthy.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from heartbeat.series import at_seconds, brief, failure, summed
from shiptypes import ProviderConfig, ProviderContext, Seconds, Series

KEYS = {"apiKeyAuth": "DD_API_KEY", "appKeyAuth": "DD_APP_KEY"}


class DatadogSourceConfig(ProviderConfig):
    type: Literal["datadog"]
    site: str | None = Field(None, description="Datadog site, e.g. datadoghq.eu; else DD_SITE")
    host: str | None = Field(None, pattern=r"^https?://", description="API base URL override")
    timeout: Seconds = Field(10.0, gt=0, le=120, description="deadline of one query")
    rollup: Literal["sum", "avg"] | None = Field(
        "sum", description="rollup per window added to queries without one; sum → per minute")
    settle: Seconds = Field(0.0, ge=0, description="leave out windows ending this close to the "
                                                   "end: their points may still be arriving")


class DatadogSource:
    def __init__(self, config: DatadogSourceConfig, context: ProviderContext) -> None:
        self.config = config
        self._context = context

    def fetch(self, query: str, start: datetime, end: datetime, step_s: float) -> Series:
        missing = [name for name in KEYS.values() if not self._context.env.get(name)]
        if missing:
            return Series(error=f"datadog: {' and '.join(missing)} not set")
        text = self._query(query, step_s)
        begin, until = at_seconds(start), at_seconds(end)
        try:
            answer = self._ask(text, int(begin), int(until))
        except Exception as error:  # any failure of the client means no data
            return Series(error=f"datadog: {_reason(error, self.config.timeout)}")
        return self._series(answer, begin, until - self.config.settle, step_s)

    def _query(self, query: str, step_s: float) -> str:
        if self.config.rollup is None or ".rollup(" in query:
            return query
        return f"{query}.rollup({self.config.rollup}, {max(1, round(step_s))})"

    def _ask(self, query: str, begin: int, until: int) -> dict[str, Any]:
        import urllib3
        from datadog_api_client import ApiClient, Configuration
        from datadog_api_client.v1.api.metrics_api import MetricsApi

        configuration = Configuration(host=self.config.host, request_timeout=self.config.timeout)
        # The client also reads DD_* from the process environment; only the pipeline's counts.
        configuration.api_key = {auth: self._context.env[name] for auth, name in KEYS.items()}
        site = self.config.site or self._context.env.get("DD_SITE")
        configuration.server_variables = {"site": site} if site else {}
        # One attempt: a retried timeout would stretch the watch's look past its deadline.
        configuration.retry_policy = urllib3.Retry(total=0)
        with ApiClient(configuration) as client:
            answer = MetricsApi(client).query_metrics(_from=begin, to=until, query=query)
        return answer.to_dict()

    def _series(self, answer: dict[str, Any], begin: float, until: float,
                step_s: float) -> Series:
        if answer.get("status") == "error" or answer.get("error"):
            return Series(error=f"datadog: {brief(answer.get('error') or 'query failed')}")
        found = answer.get("series") or []
        if not found:
            return Series(error="datadog: no series matched the query")
        pairs = []
        for series in found:
            interval = float(series.get("interval") or step_s)
            scale = 60.0 / interval if self.config.rollup == "sum" else 1.0
            for at_ms, value in series.get("pointlist") or []:
                at = at_ms / 1000
                whole = at >= begin and at + interval <= until
                if whole and isinstance(value, int | float):
                    pairs.append((at, value * scale))
        return summed(pairs, "datadog")


def _reason(error: Exception, timeout: float) -> str:
    """What went wrong, without the response headers the client's own message carries."""
    status = getattr(error, "status", None)
    if status is not None:
        body = getattr(error, "body", None)
        detail = body.get("errors", body) if isinstance(body, dict) else body
        return f"HTTP {status} {getattr(error, 'reason', '')}: {brief(detail or '')}".strip()
    text = failure(error)
    return f"no answer within {timeout:g} s" if text.startswith("ReadTimeout") else text
