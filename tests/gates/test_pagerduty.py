from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from orchestrator.notify import Notice
from orchestrator.notify.pagerduty import PagerDutyConfig, PagerDutyError, PagerDutyNotifier
from shiptypes import GateResult, Link, ProviderContext
from tests.fakehttp import FakeServer, Reply
from tests.gates.conftest import SHA, assert_no_secret

ROUTING_KEY = "R0UT1NGKEY0123456789abcdef012345"
ENQUEUE = "/v2/enqueue"
ACCEPTED = Reply(status=202, json={"status": "success", "message": "Event processed"})


@pytest.fixture
def pagerduty() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def notifier(pagerduty: FakeServer, sleeps: Sleeps | None = None,
             env: dict[str, str] | None = None, **config: object) -> PagerDutyNotifier:
    context = ProviderContext("us", "us-east-1",
                              env={"PAGERDUTY_ROUTING_KEY": ROUTING_KEY} if env is None else env)
    settings = PagerDutyConfig.model_validate({"api_url": pagerduty.url, **config})
    return PagerDutyNotifier(settings, context, sleep=sleeps if sleeps is not None else Sleeps())


def stall() -> Notice:
    return Notice(pipeline="us", kind="stall", level="page", text="3 releases halted in a row",
                  release_number=42, sha=SHA, authors=("ada", "lin"), state="halted",
                  gates=(GateResult("synthetics", False, "check 'login' failed"),),
                  links=(Link("Dashboard", "https://grafana.example.com/d/chat"),),
                  details={"halts": "3"})


def sent(pagerduty: FakeServer) -> list[dict]:
    return [r.json() for r in pagerduty.requests_to(ENQUEUE)]


def test_a_stall_triggers_an_incident_keyed_by_pipeline(pagerduty: FakeServer) -> None:
    pagerduty.route("POST", ENQUEUE, ACCEPTED)
    notifier(pagerduty).notify(stall())
    [event] = sent(pagerduty)
    assert event["routing_key"] == ROUTING_KEY
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == "ship-stall-us"
    assert event["payload"]["summary"] == "[us] 3 releases halted in a row"
    assert event["payload"]["source"] == "ship/us"
    assert event["payload"]["severity"] == "critical"
    assert event["payload"]["custom_details"] == {
        "pipeline": "us", "kind": "stall", "release": 42, "state": "halted", "sha": SHA,
        "actor": "ship", "authors": "ada, lin", "halts": "3",
        "gates": ["synthetics: failed: check 'login' failed"]}
    assert event["links"] == [{"href": "https://grafana.example.com/d/chat", "text": "Dashboard"}]
    rest = {k: v for k, v in event.items() if k != "routing_key"}
    assert ROUTING_KEY not in json.dumps(rest)
    assert_no_secret(json.dumps(event))


def test_stall_resolved_resolves_the_same_incident(pagerduty: FakeServer) -> None:
    pagerduty.route("POST", ENQUEUE, ACCEPTED)
    pager = notifier(pagerduty)
    pager.notify(stall())
    pager.notify(Notice(pipeline="us", kind="stall_resolved", text="release 43 passed its gates"))
    trigger, resolve = sent(pagerduty)
    assert resolve == {"routing_key": ROUTING_KEY, "event_action": "resolve",
                       "dedup_key": trigger["dedup_key"]}


def test_a_breach_triggers_its_own_incident_per_release(pagerduty: FakeServer) -> None:
    pagerduty.route("POST", ENQUEUE, ACCEPTED)
    pager = notifier(pagerduty, breach_severity="error")
    for number in (42, 43):
        pager.notify(Notice(pipeline="eu", kind="breach", level="page", release_number=number,
                            text=f"messages_created below 60% of baseline: rolled back #{number}"))
    first, second = sent(pagerduty)
    assert (first["dedup_key"], second["dedup_key"]) == ("ship-breach-eu-42", "ship-breach-eu-43")
    assert first["payload"]["severity"] == "error"
    assert first["payload"]["class"] == "breach"


def test_other_notices_do_not_page(pagerduty: FakeServer) -> None:
    pager = notifier(pagerduty)
    for kind in ("stage", "halted", "live", "lock", "rollback"):
        pager.notify(Notice(pipeline="us", kind=kind, text="x"))  # type: ignore[arg-type]
    assert pagerduty.requests == []


def test_429_waits_as_told_then_succeeds(pagerduty: FakeServer) -> None:
    pagerduty.route("POST", ENQUEUE, [Reply(status=429, headers={"Retry-After": "7"}), ACCEPTED])
    sleeps = Sleeps()
    notifier(pagerduty, sleeps).notify(stall())
    assert sleeps == [7.0]
    assert len(sent(pagerduty)) == 2


def test_5xx_is_retried_with_backoff_then_raises(pagerduty: FakeServer) -> None:
    pagerduty.route("POST", ENQUEUE, Reply(status=500, body="internal"))
    sleeps = Sleeps()
    with pytest.raises(PagerDutyError, match=r"did not accept the trigger of ship-stall-us after "
                       r"4 attempts: HTTP 500") as caught:
        notifier(pagerduty, sleeps, attempts=4, backoff=0.5, max_wait=1.5).notify(stall())
    assert sleeps == [0.5, 1.0, 1.5]
    assert len(sent(pagerduty)) == 4
    assert ROUTING_KEY not in str(caught.value)


def test_a_transient_5xx_then_202_succeeds(pagerduty: FakeServer) -> None:
    pagerduty.route("POST", ENQUEUE, [Reply(status=502), Reply(status=503), ACCEPTED])
    sleeps = Sleeps()
    notifier(pagerduty, sleeps).notify(stall())
    assert sleeps == [1.0, 2.0]


def test_400_is_not_retried_and_says_why_without_the_key(pagerduty: FakeServer) -> None:
    pagerduty.route("POST", ENQUEUE, Reply(status=400, json={
        "status": "invalid event", "message": "Event object is invalid",
        "errors": [f"routing_key {ROUTING_KEY} is not a valid integration key"]}))
    sleeps = Sleeps()
    with pytest.raises(PagerDutyError) as caught:
        notifier(pagerduty, sleeps).notify(stall())
    message = str(caught.value)
    assert message == ("PagerDuty refused the trigger of ship-stall-us (HTTP 400): routing_key "
                       "*** is not a valid integration key")
    assert sleeps == []
    assert len(sent(pagerduty)) == 1


def test_an_unreachable_pagerduty_is_retried_then_raises() -> None:
    with FakeServer() as gone:
        url = gone.url
    sleeps = Sleeps()
    context = ProviderContext("us", "us-east-1", env={"PAGERDUTY_ROUTING_KEY": ROUTING_KEY})
    pager = PagerDutyNotifier(PagerDutyConfig(api_url=url, attempts=2), context, sleep=sleeps)
    with pytest.raises(PagerDutyError, match="cannot reach PagerDuty"):
        pager.notify(stall())
    assert sleeps == [1.0]


def test_no_routing_key_raises_without_calling(pagerduty: FakeServer) -> None:
    with pytest.raises(PagerDutyError, match="PAGERDUTY_ROUTING_KEY is not set"):
        notifier(pagerduty, env={}).notify(stall())
    assert pagerduty.requests == []


def test_the_routing_key_variable_is_configurable(pagerduty: FakeServer) -> None:
    pagerduty.route("POST", ENQUEUE, ACCEPTED)
    notifier(pagerduty, env={"PD_EU_KEY": "eu-key-0123456789"},
             routing_key_env="PD_EU_KEY").notify(stall())
    assert sent(pagerduty)[0]["routing_key"] == "eu-key-0123456789"
