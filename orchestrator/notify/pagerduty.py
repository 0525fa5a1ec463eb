"""Paging on-call through the PagerDuty Events API v2.

Three notices page: a stall (too many halts in a row) triggers an incident keyed by the
pipeline, so repeated stalls update one incident and `stall_resolved` resolves it; a breach
(the heartbeat failed and ship rolled back) triggers an incident keyed by the release.
Other notices are not for a pager and are ignored.

429 (after its Retry-After) and 5xx answers are retried with backoff, a bounded number of
times; any other refusal is not. A notice that cannot be delivered raises
`PagerDutyError`, which the broadcaster records and shows; the routing key never appears
in it, nor anywhere in the event but its `routing_key` field.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import requests
from pydantic import Field

from orchestrator.notify import Notice
from orchestrator.notify.outbox import retry_after
from shiptypes import ProviderConfig, ProviderContext

Severity = Literal["critical", "error", "warning", "info"]


class PagerDutyConfig(ProviderConfig):
    type: Literal["pagerduty"] = "pagerduty"
    name: str = "pagerduty"
    routing_key_env: str = Field("PAGERDUTY_ROUTING_KEY",
                                 description="environment variable with the integration key")
    api_url: str = "https://events.pagerduty.com"
    source: str = Field("ship", description="the event's source; the pipeline is appended")
    stall_severity: Severity = "critical"
    breach_severity: Severity = "critical"
    client_url: str | None = Field(None, description="a link back to ship in the incident")
    attempts: int = Field(5, ge=1, le=100, description="tries per event, the first included")
    backoff: float = Field(1.0, gt=0, le=3600,
                           description="real seconds before the first retry; doubles")
    max_wait: float = Field(60.0, gt=0, le=3600, description="the longest wait between tries")
    request_timeout: float = Field(10.0, gt=0, le=600)


class PagerDutyError(Exception):
    """The event was not accepted; the message says why, never with the routing key."""


class PagerDutyNotifier:
    def __init__(self, config: PagerDutyConfig, context: ProviderContext,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.name = config.name
        self._env = context.env
        self._sleep = sleep

    def notify(self, notice: Notice) -> None:
        event = self.event(notice)
        if event is not None:
            self._send(event, notice)

    def event(self, notice: Notice) -> dict[str, Any] | None:
        """The Events v2 body for a notice, without the routing key; None: no page."""
        if notice.kind == "stall":
            return self._trigger(notice, stall_key(notice.pipeline), self.config.stall_severity)
        if notice.kind == "stall_resolved":
            return {"event_action": "resolve", "dedup_key": stall_key(notice.pipeline)}
        if notice.kind == "breach":
            return self._trigger(notice, breach_key(notice), self.config.breach_severity)
        return None

    def _trigger(self, notice: Notice, dedup_key: str, severity: Severity) -> dict[str, Any]:
        event: dict[str, Any] = {
            "event_action": "trigger",
            "dedup_key": dedup_key,
            "payload": {
                "summary": f"[{notice.pipeline}] {notice.text}"[:1024],
                "source": f"{self.config.source}/{notice.pipeline}",
                "severity": severity,
                "component": notice.pipeline,
                "class": notice.kind,
                "custom_details": _details(notice),
            },
            "client": "ship",
            "links": [{"href": link.url, "text": link.title} for link in notice.links],
        }
        if self.config.client_url:
            event["client_url"] = self.config.client_url
        return event

    def _send(self, event: dict[str, Any], notice: Notice) -> None:
        routing_key = self._env.get(self.config.routing_key_env)
        if not routing_key:
            raise PagerDutyError(f"{self.config.routing_key_env} is not set: cannot page "
                                 f"for the {notice.kind} of {notice.pipeline}")
        what = f"the {event['event_action']} of {event['dedup_key']}"
        url = self.config.api_url.rstrip("/") + "/v2/enqueue"
        last = ""
        with requests.Session() as session:
            for attempt in range(1, self.config.attempts + 1):
                wait, last = self._post(session, url, {"routing_key": routing_key, **event}, what)
                if wait is None:
                    return
                if attempt < self.config.attempts:
                    self._sleep(min(wait or self.config.backoff * 2 ** (attempt - 1),
                                    self.config.max_wait))
        raise PagerDutyError(f"PagerDuty did not accept {what} after "
                             f"{self.config.attempts} attempts: {last}")

    def _post(self, session: requests.Session, url: str, body: dict[str, Any],
              what: str) -> tuple[float | None, str]:
        """Sends once. (None, "") when accepted; otherwise (how long to wait before the
        next try, 0 meaning the usual backoff, and what went wrong)."""
        try:
            response = session.post(url, json=body, timeout=self.config.request_timeout)
        except requests.RequestException as error:
            return 0.0, f"cannot reach PagerDuty ({type(error).__name__})"
        status = response.status_code
        if status in (200, 201, 202):
            return None, ""
        if status == 429:
            return _retry_after(response), "HTTP 429 (rate limited)"
        if status >= 500:
            return 0.0, f"HTTP {status}"
        errors = _errors(response, body["routing_key"])
        raise PagerDutyError(f"PagerDuty refused {what} (HTTP {status}){errors}")


def stall_key(pipeline: str) -> str:
    return f"ship-stall-{pipeline}"


def breach_key(notice: Notice) -> str:
    release = notice.release_number if notice.release_number is not None else notice.release_id
    return f"ship-breach-{notice.pipeline}-{release}"


def _details(notice: Notice) -> dict[str, Any]:
    details: dict[str, Any] = {"pipeline": notice.pipeline, "kind": notice.kind}
    facts = {"release": notice.release_number, "state": notice.state, "sha": notice.sha,
             "actor": notice.actor, "authors": ", ".join(notice.authors) or None}
    details.update({k: v for k, v in facts.items() if v is not None})
    if notice.gates:
        details["gates"] = [f"{g.gate}: {'passed' if g.passed else 'failed'}: {g.summary}"
                            for g in notice.gates]
    return {**details, **notice.details}


def _retry_after(response: requests.Response) -> float:
    return retry_after(response.headers.get("Retry-After"))


def _errors(response: requests.Response, routing_key: str) -> str:
    """PagerDuty's own explanation of a refusal, which can quote the key: masked."""
    try:
        body = response.json()
    except ValueError:
        return ""
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors:
        return ""
    return ": " + "; ".join(str(e) for e in errors).replace(routing_key, "***")[:500]
