from __future__ import annotations

from collections.abc import Iterator

import pytest

from gates.datadog_synthetics import DatadogSyntheticsConfig, DatadogSyntheticsGate
from shiptypes import PreprodTarget, ProviderContext, ReleaseRef
from tests.fakehttp import FakeServer, Reply
from tests.gates.conftest import SECRETS, assert_no_secret

TRIGGER = "/api/v1/synthetics/tests/trigger/ci"
BATCH = "/api/v1/synthetics/ci/batch/batch-1"
TARGET = PreprodTarget("preprod-us", "https://preprod-us.example.com")


@pytest.fixture
def datadog() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


def gate(datadog: FakeServer, context: ProviderContext, **config: object) -> DatadogSyntheticsGate:
    settings = {"type": "datadog_synthetics", "public_ids": ["abc-def-ghi", "jkl-mno-pqr"],
                "host": datadog.url, "interval": 0.05, "max_interval": 0.1, "timeout": 5,
                **config}
    return DatadogSyntheticsGate(DatadogSyntheticsConfig.model_validate(settings), context)


def triggered() -> Reply:
    return Reply(json={"batch_id": "batch-1", "locations": [{"id": 1, "name": "aws:us-east-1"}],
                       "results": [{"public_id": "abc-def-ghi", "result_id": "r1", "location": 1}],
                       "triggered_check_ids": ["abc-def-ghi", "jkl-mno-pqr"]})


def batch(status: str, *results: dict) -> Reply:
    return Reply(json={"data": {"status": status, "results": list(results)}})


def result(public_id: str, status: str, result_id: str = "r1", **extra: str) -> dict:
    return {"test_public_id": public_id, "test_name": f"test {public_id}", "status": status,
            "result_id": result_id, "location": "aws:us-east-1", **extra}


def test_pending_then_passed_passes(datadog: FakeServer, context: ProviderContext,
                                    release: ReleaseRef) -> None:
    datadog.route("POST", TRIGGER, triggered())
    datadog.route("GET", BATCH, [batch("in_progress", result("abc-def-ghi", "in_progress")),
                                 batch("passed", result("abc-def-ghi", "passed"),
                                       result("jkl-mno-pqr", "passed", "r2"))])
    outcome = gate(datadog, context, start_url="{base_url}/login").run(release, TARGET)
    assert outcome.passed and not outcome.errored, outcome
    assert outcome.summary == "2 Datadog Synthetics results passed"
    assert outcome.links[0].url == ("https://app.datadoghq.com/synthetics/explorer/ci?"
                                    "batchResultId=batch-1")
    sent = datadog.requests_to(TRIGGER)[0]
    assert sent.headers["dd-api-key"] == SECRETS["DD_API_KEY"]
    assert sent.headers["dd-application-key"] == SECRETS["DD_APP_KEY"]
    tests = sent.json()["tests"]
    assert [t["public_id"] for t in tests] == ["abc-def-ghi", "jkl-mno-pqr"]
    assert {t["startUrl"] for t in tests} == {"https://preprod-us.example.com/login"}
    assert tests[0]["metadata"]["git"]["commitSha"] == release.sha
    assert len(datadog.requests_to(BATCH)) == 2
    assert_no_secret(outcome)


def test_failed_names_the_failing_tests_with_links(datadog: FakeServer, context: ProviderContext,
                                                   release: ReleaseRef) -> None:
    datadog.route("POST", TRIGGER, triggered())
    datadog.route("GET", BATCH, batch(
        "failed", result("abc-def-ghi", "passed"), result("jkl-mno-pqr", "failed", "r2"),
        result("stu-vwx-yz0", "failed", "r3", execution_rule="non_blocking")))
    outcome = gate(datadog, context).run(release, TARGET)
    assert not outcome.passed and not outcome.errored
    assert outcome.summary == "Datadog Synthetics failed: test jkl-mno-pqr (aws:us-east-1)"
    assert outcome.links[0].url == ("https://app.datadoghq.com/synthetics/details/jkl-mno-pqr/"
                                    "result/r2")


def test_the_site_comes_from_the_environment(datadog: FakeServer, release: ReleaseRef,
                                             context: ProviderContext) -> None:
    eu = ProviderContext("eu", "eu-west-1", clock=context.clock,
                         env={**context.env, "DD_SITE": "datadoghq.eu"})
    datadog.route("POST", TRIGGER, triggered())
    datadog.route("GET", BATCH, batch("passed", result("abc-def-ghi", "passed")))
    outcome = gate(datadog, eu).run(release, TARGET)
    assert outcome.links[0].url.startswith("https://app.datadoghq.eu/")


@pytest.mark.parametrize(("trigger", "poll", "why"), [
    (Reply(status=403, json={"errors": ["Forbidden"]}), None,
     "Datadog credentials refused (HTTP 403)"),
    (triggered(), Reply(status=403, json={"errors": ["Forbidden"]}),
     "Datadog credentials refused (HTTP 403)"),
    (Reply(status=503, body="down"), None, "Datadog is failing (HTTP 503)"),
    (triggered(), Reply(status=500, body="oops"), "Datadog is failing (HTTP 500)"),
    (Reply(json={"locations": []}), None, "malformed answer: no batch id"),
    (triggered(), Reply(json={"data": {}}), "malformed answer: batch batch-1 has no status"),
    (triggered(), Reply(body="<html>", headers={"Content-Type": "application/json"}),
     "Datadog sent a malformed answer: Invalid type"),
    (Reply(json={"batch_id": 3}), None, "Datadog sent a malformed answer: Invalid type"),
    (triggered(), batch("skipped"), "Datadog skipped every test"),
    (triggered(), Reply(json={}, delay=1.0), "cannot reach Datadog: MaxRetryError"),
])
def test_bad_answers_fail_closed(datadog: FakeServer, context: ProviderContext,
                                 release: ReleaseRef, trigger: Reply, poll: Reply | None,
                                 why: str) -> None:
    datadog.route("POST", TRIGGER, trigger)
    if poll is not None:
        datadog.route("GET", BATCH, poll)
    outcome = gate(datadog, context, timeout=0.3, max_errors=1,
                   request_timeout=0.2).run(release, TARGET)
    assert not outcome.passed and outcome.errored
    assert why in outcome.summary
    assert len(datadog.requests_to(BATCH)) <= 2  # one try, and one more for a transient error
    assert_no_secret(outcome)


def test_still_running_at_the_deadline_errors(datadog: FakeServer, context: ProviderContext,
                                              release: ReleaseRef) -> None:
    datadog.route("POST", TRIGGER, triggered())
    datadog.route("GET", BATCH, batch("in_progress", result("abc-def-ghi", "in_progress")))
    outcome = gate(datadog, context, timeout=0.3).run(release, TARGET)
    assert not outcome.passed and outcome.errored
    assert outcome.summary == ("Datadog Synthetics batch batch-1 did not finish within 0.3s: "
                               "1 of 1 still running")
    assert len(datadog.requests_to(BATCH)) >= 3


def test_a_5xx_blip_while_polling_is_tolerated(datadog: FakeServer, context: ProviderContext,
                                               release: ReleaseRef) -> None:
    datadog.route("POST", TRIGGER, triggered())
    datadog.route("GET", BATCH, [Reply(status=502), batch("passed", result("abc", "passed"))])
    assert gate(datadog, context).run(release, TARGET).passed


def test_missing_keys_error_without_calling(datadog: FakeServer, release: ReleaseRef,
                                            context: ProviderContext) -> None:
    bare = ProviderContext("us", "us-east-1", clock=context.clock, env={"DD_API_KEY": "x" * 32})
    outcome = gate(datadog, bare).run(release, TARGET)
    assert outcome.errored and outcome.summary.startswith("DD_APP_KEY not set")
    assert datadog.requests == []
