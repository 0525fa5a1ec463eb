"""Stall paging end to end: three halted releases in a row page on-call through PagerDuty
Events v2 (a local fake answering like the vendor, one 500 first), the next release to pass
its gates resolves the page with the same dedup key, and no secret from the environment
shows up in any event, notice or gate result."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orchestrator import config
from orchestrator.runner import Runner
from orchestrator.runtime import Ship, use
from orchestrator.store import Store
from shiptypes import Commit
from tests.conftest import SIM_PIPELINES
from tests.fakehttp import FakeServer, Reply
from tests.test_flows import Recorder
from tests.virtual_clock import VirtualClock

ROUTING_KEY = "R0UT1NGKEY-very-secret-123"
GITHUB_TOKEN = "ghp_secret_token_never_shown"


def _pipelines(pagerduty_url: str) -> str:
    notify = ("notify: {console: false, links: {Logs: \"https://logs.example.com/{region}/"
              "{release}\"}}")
    paging = (f"notify: {{console: false, pagerduty: {{api_url: \"{pagerduty_url}\", "
              "backoff: 0.05, max_wait: 0.2}, links: {Logs: \"https://logs.example.com/"
              "{region}/{release}\"}}")
    text = SIM_PIPELINES.replace(notify, paging)
    return text.replace("- {type: sim, name: smoke}",
                        "- {type: sim, name: smoke, fail_releases: [1, 2, 3]}")


@pytest.mark.usefixtures("prefect_api")
def test_three_halts_page_once_and_a_pass_resolves_without_leaking_secrets(
        tmp_path: Path) -> None:
    with FakeServer() as pagerduty:
        pagerduty.route("POST", "/v2/enqueue",
                        [Reply(status=500, json={"status": "unavailable"}),
                         Reply(status=202, json={"status": "success", "dedup_key": "x"})])
        loaded = config.parse(_pipelines(pagerduty.url))
        clock = VirtualClock()
        store = Store(f"sqlite:///{tmp_path}/ship.db", clock)
        ship = use(Ship(loaded, store, clock,
                        env={"PAGERDUTY_ROUTING_KEY": ROUTING_KEY, "GITHUB_TOKEN": GITHUB_TOKEN}))
        recorder = Recorder()
        runner = Runner(ship)
        ship.pipeline("us").broadcast.notifiers.append(recorder)

        async def deploy(n: int) -> None:
            commit = Commit(f"{n:040x}", "ann", f"change {n}", clock.now())
            await runner.deploy("us", [commit], "ann")
            await runner.settle("us")

        for n in (1, 2, 3, 4):
            asyncio.run(clock.run(deploy(n)))
        assert ship.close_notifiers(timeout=10)

        sent = [r.json() for r in pagerduty.requests_to("/v2/enqueue")]
        delivered = sent[1:]  # the first try met a 500 and was retried
        assert [e["event_action"] for e in delivered] == ["trigger", "resolve"]
        trigger, resolve = delivered
        assert trigger["dedup_key"] == resolve["dedup_key"] == "ship-stall-us"
        assert trigger["routing_key"] == ROUTING_KEY
        assert "3" in trigger["payload"]["summary"]
        assert [link["href"] for link in trigger["links"]] == [
            f"https://logs.example.com/us-east-1/us-{n}" for n in (3, 2, 1)]

    texts = [e.message + str(e.data) for e in store.events("us", limit=1000)]
    texts += [n.text + str(n.details) for n in recorder.notices]
    texts += [g.summary + g.output_tail for r in store.releases("us")
              for g in store.gate_results(r.id)]
    for secret in (ROUTING_KEY, GITHUB_TOKEN):
        assert not any(secret in text for text in texts)
