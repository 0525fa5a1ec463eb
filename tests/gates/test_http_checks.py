from __future__ import annotations

import pytest
from pydantic import ValidationError

from gates.http_checks import HttpChecksConfig, HttpChecksGate
from shiptypes import PreprodTarget, ProviderContext, ReleaseRef
from tests.gates.conftest import assert_no_secret, free_port


def checks(context: ProviderContext, *items: dict, **config: object) -> HttpChecksGate:
    settings = {"type": "http_checks", "checks": list(items), **config}
    return HttpChecksGate(HttpChecksConfig.model_validate(settings), context)


def test_every_expectation_met_passes(context: ProviderContext, release: ReleaseRef,
                                      app: PreprodTarget) -> None:
    gate = checks(context,
                  {"name": "status", "path": "/api/status",
                   "expect": {"status": 200, "contains": '"ok"', "max_latency": "5s",
                              "json": {"status": "ok", "release.sha": "abc1234",
                                       "items.1.id": 2}}},
                  {"path": "/health", "expect": {"status": [200, 204]}},
                  {"method": "POST", "path": "/echo", "json": {"hello": "world"},
                   "expect": {"json": {"content-type": "application/json"}}})
    result = gate.run(release, app)
    assert result.passed and not result.errored, result
    assert result.summary == "3 HTTP checks passed against preprod-us"
    assert "ok   GET /health (1 tries)" in result.output_tail


@pytest.mark.parametrize(("expect", "why"), [
    ({"status": 201}, "expected status 201, got 200"),
    ({"contains": "nope"}, "body does not contain 'nope'"),
    ({"json": {"release.sha": "fff0000"}}, "JSON field release.sha is 'abc1234', expected "
     "'fff0000'"),
    ({"json": {"items.5.id": 1}}, "JSON field items.5.id is missing"),
])
def test_a_missed_expectation_fails_naming_the_check(
        context: ProviderContext, release: ReleaseRef, app: PreprodTarget,
        expect: dict, why: str) -> None:
    gate = checks(context, {"name": "status", "path": "/api/status", "expect": expect,
                            "retries": 1, "retry_delay": 0.01})
    result = gate.run(release, app)
    assert not result.passed and not result.errored
    assert result.summary == f"check 'status' failed: {why}"
    assert result.links[0].url == f"{app.base_url}/api/status"
    assert "(2 tries)" in result.output_tail


def test_a_slow_answer_misses_its_latency(context: ProviderContext, release: ReleaseRef,
                                          app: PreprodTarget) -> None:
    gate = checks(context, {"path": "/slow", "expect": {"max_latency": "100ms"}, "retries": 0})
    result = gate.run(release, app)
    assert not result.passed
    assert "more than 100 ms" in result.summary


def test_retries_carry_a_flaky_check(context: ProviderContext, release: ReleaseRef,
                                     app: PreprodTarget) -> None:
    gate = checks(context, {"path": "/flaky", "retries": 2, "retry_delay": 0.05})
    result = gate.run(release, app)
    assert result.passed, result
    assert "(3 tries)" in result.output_tail


def test_headers_take_secrets_from_the_environment_and_never_show_them(
        context: ProviderContext, release: ReleaseRef, app: PreprodTarget) -> None:
    header = {"Authorization": "Bearer ${PREPROD_TOKEN}"}
    gate = checks(context,
                  {"name": "private", "path": "/private", "headers": header},
                  {"name": "echo", "path": "/echo", "headers": header, "retries": 0,
                   "expect": {"json": {"authorization": "something else"}}})
    result = gate.run(release, app)
    assert not result.passed
    assert "ok   private" in result.output_tail
    assert result.summary.startswith(
        "check 'echo' failed: JSON field authorization is 'Bearer ***'")
    assert_no_secret(result)


def test_a_missing_header_variable_errors(context: ProviderContext, release: ReleaseRef,
                                          app: PreprodTarget) -> None:
    gate = checks(context, {"path": "/private", "headers": {"X-Key": "${NOT_SET}"}})
    result = gate.run(release, app)
    assert result.errored and "NOT_SET is not set" in result.summary


def test_an_unreachable_preprod_errors(context: ProviderContext, release: ReleaseRef) -> None:
    target = PreprodTarget("preprod-us", f"http://127.0.0.1:{free_port()}")
    result = checks(context, {"path": "/", "retry_delay": 0.01}).run(release, target)
    assert not result.passed and result.errored
    assert "cannot reach pre-prod (ConnectionError)" in result.summary


def test_one_failure_among_unreachable_checks_is_a_failure(
        context: ProviderContext, release: ReleaseRef, app: PreprodTarget) -> None:
    gate = checks(context, {"path": "/slow", "retries": 0}, {"path": "/missing", "retries": 0},
                  request_timeout=0.1)
    result = gate.run(release, app)
    assert not result.passed and not result.errored
    assert result.summary == "check 'GET /missing' failed: expected status 200, got 404 (+1 more)"
    assert "FAIL GET /slow: no answer within 0.1s" in result.output_tail


def test_a_check_has_one_body_at_most() -> None:
    with pytest.raises(ValidationError, match="either body or json"):
        HttpChecksConfig.model_validate({"type": "http_checks", "checks": [
            {"path": "/", "body": "x", "json": {"a": 1}}]})

