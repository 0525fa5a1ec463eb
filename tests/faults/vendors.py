"""Slack, PagerDuty, GitHub (deployments and CI) and Datadog on one local fake server, each
answering as the vendor does unless told a fault, and a simulated pipeline whose notifiers,
CI gate and heartbeat source talk to it through their real clients. Used by
tests/faults/test_vendor_faults.py and bench/faults.py."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from orchestrator import config
from orchestrator.runner import Runner
from orchestrator.runtime import Ship, use
from orchestrator.store import Store
from tests.conftest import SIM_PIPELINES
from tests.fakehttp import FakeServer, Reply, Request
from tests.virtual_clock import VirtualClock

VENDORS = ("slack", "pagerduty", "github", "github_ci", "datadog")
FAULTS = ("500", "429", "timeout", "slow", "malformed")
NOTIFIERS = ("slack", "pagerduty", "github")
REQUEST_TIMEOUT = 0.3  # real seconds every client is given here
ENV = {"SLACK_BOT_TOKEN": "xoxb-faults-token-0123456789", "PAGERDUTY_ROUTING_KEY": "R0UTINGKEY42",
       "GITHUB_TOKEN": "ghp_faultstoken0123456789", "DD_API_KEY": "dd-api-faults",
       "DD_APP_KEY": "dd-app-faults"}
RATE_PER_WINDOW = 1000 / 6  # 1000 a minute, in 10-second windows


class FakeVendors(FakeServer):
    """Every vendor answers well; `faults[vendor] = kind` makes one misbehave."""

    ROUTES = {
        "slack": ("POST", r"/api/chat\.(postMessage|update)"),
        "pagerduty": ("POST", r"/v2/enqueue"),
        "github": ("POST", r"/repos/[^/]+/[^/]+/deployments(/\d+/statuses)?"),
        "github_ci": ("GET", r"/repos/[^/]+/[^/]+/commits/[0-9a-f]+/(status|check-runs)"),
        "datadog": ("GET", r"/api/v1/query"),
    }

    def __init__(self) -> None:
        super().__init__()
        self.faults: dict[str, str] = {}
        self.calls: Counter[str] = Counter()
        self._ids = itertools.count(1)
        for vendor, (method, path) in self.ROUTES.items():
            self.route(method, path, partial(self._as, vendor))

    def _as(self, vendor: str, request: Request) -> Reply:
        self.calls[vendor] += 1
        good = getattr(self, f"_{vendor}")(request)
        return faulty(self.faults.get(vendor), good, self.calls[vendor])

    def _slack(self, request: Request) -> Reply:
        return Reply(json={"ok": True, "channel": "C0DEPLOYS",
                           "ts": f"1700000000.{next(self._ids):06d}"})

    def _pagerduty(self, request: Request) -> Reply:
        return Reply(status=202, json={"status": "success", "message": "Event processed",
                                       "dedup_key": request.json().get("dedup_key")})

    def _github(self, request: Request) -> Reply:
        return Reply(status=201, json={"id": next(self._ids)})

    def _github_ci(self, request: Request) -> Reply:
        if request.path.endswith("/status"):
            return Reply(json={"state": "success", "statuses": [
                {"context": "build", "state": "success", "target_url": "https://ci.example/1"}]})
        return Reply(json={"total_count": 1, "check_runs": [
            {"id": 1, "name": "test", "status": "completed", "conclusion": "success",
             "html_url": "https://ci.example/2"}]})

    def _datadog(self, request: Request) -> Reply:
        begin, until = int(request.query["from"][0]), int(request.query["to"][0])
        points = [[t * 1000.0, RATE_PER_WINDOW] for t in range(begin - begin % 10, until, 10)]
        return Reply(json={"status": "ok", "res_type": "time_series", "series": [
            {"metric": "messages.created", "interval": 10, "pointlist": points}]})

    def sent(self, vendor: str) -> list[Request]:
        """The requests the vendor answered well (what reached it, in effect)."""
        method, path = self.ROUTES[vendor]
        return [r for r in self.requests_to(path) if r.method == method]


def faulty(kind: str | None, good: Reply, call: int) -> Reply:
    """The vendor's answer under a fault: 500 always; 429 with Retry-After on the first two
    calls; no answer within the client's timeout; an answer slow but in time; a 200 whose
    body is not JSON."""
    if kind == "500":
        return Reply(status=500, json={"ok": False, "error": "internal_error"})
    if kind == "429" and call <= 2:
        return Reply(status=429, json={"ok": False, "error": "ratelimited"},
                     headers={"Retry-After": "1"})
    if kind == "timeout":
        return replace(good, delay=REQUEST_TIMEOUT * 4)
    if kind == "slow":
        return replace(good, delay=REQUEST_TIMEOUT / 2)
    if kind == "malformed":
        return Reply(status=200, body='{"ok": tru', headers={"Content-Type": "application/json"})
    return good


def pipelines(url: str, ci: bool = False, datadog: bool = False,
              breach: list[int] | None = None) -> dict[str, Any]:
    """The suite's simulated `us` pipeline, with every notifier, and optionally the CI gate
    and the heartbeat, talking to the fake vendors."""
    data = yaml.safe_load(SIM_PIPELINES)
    us = {**data["x-defaults"], "region": "us-east-1"}
    delivery = {"attempts": 3, "backoff": 0.05, "max_wait": 2, "give_up_after": 10,
                "request_timeout": REQUEST_TIMEOUT}
    us["notify"] = {
        "console": False, "links": us["notify"]["links"],
        # slack-sdk takes whole seconds: 0.3 would become 0, a socket that never waits.
        "slack": {"channel": "#deploys", "api_url": f"{url}/api/",
                  **delivery, "request_timeout": 1},
        "pagerduty": {"api_url": url, "attempts": 3, "backoff": 0.05, "max_wait": 2,
                      "request_timeout": REQUEST_TIMEOUT},
        "github": {"api_url": url, **delivery}}
    if ci:
        us["ci"] = {"type": "github_ci", "name": "ci", "repo": "example/chat", "api_url": url,
                    "interval": 1, "max_interval": 2, "max_errors": 2, "timeout": 300,
                    "request_timeout": REQUEST_TIMEOUT}
    if datadog:
        us["heartbeat"]["source"] = {"type": "datadog", "host": url, "timeout": REQUEST_TIMEOUT}
        us["heartbeat"]["metrics"][0]["query"] = "sum:messages.created{region:{region}}"
        # Windows twice the fake's 10 s buckets: every look holds a whole bucket wherever
        # the release went live. One bucket long, a watch's first look finds none unless
        # the release went live on a bucket's edge (a real Datadog does the same).
        us["heartbeat"]["window"] = "20s"
    if breach:
        us["heartbeat"]["source"]["breach_releases"] = breach
    return {"version": 1, "pipelines": {"us": us}}


def vendor_world(workdir: Path, url: str, **options: Any) -> tuple[Runner, Store, Path]:
    """A Ship whose notifiers are the ones pipelines.yaml asks for; the config file too."""
    path = workdir / "pipelines.yaml"
    path.write_text(yaml.safe_dump(pipelines(url, **options)))
    clock = VirtualClock()  # driven by tests.test_flows.run: deploy() uses it
    store = Store(f"sqlite:///{workdir}/ship.db", clock)
    ship = Ship(config.load(path), store, clock, env=ENV, state_dir=workdir / ".ship")
    return Runner(use(ship)), store, path


def failures_by_notifier(store: Store) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for event in store.events("us", limit=1000):
        if event.kind == "notify_failed":
            name = event.data.get("notifier") or event.message.split()[0]
            found.setdefault(name, []).append(event.message)
    return found

