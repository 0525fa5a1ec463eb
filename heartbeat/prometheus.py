"""Prometheus as a heartbeat source: the HTTP API's range query (/api/v1/query_range).

The query should give one rate per window, e.g.
`sum(increase(chat_messages_created_total{region="{region}"}[1m]))`; a grouped answer is
added up. Every failure (unreachable, timeout, HTTP error, an answer that is not a matrix,
no series) is a Series with `error`: no data, never healthy.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from heartbeat.series import at_seconds, brief, failure, summed
from shiptypes import ProviderConfig, ProviderContext, Seconds, Series


class PrometheusSourceConfig(ProviderConfig):
    type: Literal["prometheus"]
    url: str = Field(pattern=r"^https?://", description="base URL of the Prometheus server")
    token_env: str | None = Field(None, description="environment variable with a bearer token")
    timeout: Seconds = Field(10.0, gt=0, le=120, description="deadline of one query")


class PrometheusSource:
    def __init__(self, config: PrometheusSourceConfig, context: ProviderContext) -> None:
        self.config = config
        self._context = context
        self._endpoint = config.url.rstrip("/") + "/api/v1/query_range"

    def fetch(self, query: str, start: datetime, end: datetime, step_s: float) -> Series:
        import requests

        headers = {"Accept": "application/json"}
        if self.config.token_env:
            token = self._context.env.get(self.config.token_env)
            if not token:
                return Series(error=f"prometheus: {self.config.token_env} is not set")
            headers["Authorization"] = f"Bearer {token}"
        params = {"query": query, "start": f"{at_seconds(start):.3f}",
                  "end": f"{at_seconds(end):.3f}", "step": f"{step_s:g}s"}
        try:
            answer = requests.get(self._endpoint, params=params, headers=headers,
                                  timeout=self.config.timeout)
        except requests.Timeout:
            return Series(error=f"prometheus: no answer within {self.config.timeout:g} s")
        except requests.RequestException as error:
            return Series(error=f"prometheus: {failure(error)}")
        try:
            body = answer.json()
        except ValueError:
            return Series(error=f"prometheus: HTTP {answer.status_code}, not JSON: "
                                f"{brief(answer.text)}")
        return _series(answer.status_code, body)


def _series(status: int, body: Any) -> Series:
    if not isinstance(body, dict):
        return Series(error=f"prometheus: HTTP {status}, unexpected answer {brief(body)}")
    if status != 200 or body.get("status") != "success":
        reason = body.get("error") or body.get("status") or "no reason given"
        return Series(error=f"prometheus: HTTP {status}, {body.get('errorType', 'error')}: "
                            f"{brief(reason)}")
    data = body.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "matrix":
        return Series(error="prometheus: the answer is not a range (matrix) result")
    result = data.get("result")
    if not isinstance(result, list) or not result:
        return Series(error="prometheus: no series matched the query")
    try:
        pairs = [(float(at), value) for item in result for at, value in item["values"]]
    except (KeyError, TypeError, ValueError):
        return Series(error="prometheus: malformed series in the answer")
    return summed(pairs, "prometheus")
