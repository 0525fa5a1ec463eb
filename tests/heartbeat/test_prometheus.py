"""The Prometheus source through requests against a local fake HTTP API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from heartbeat.prometheus import PrometheusSource, PrometheusSourceConfig
from shiptypes import ProviderContext
from tests.fakehttp import FakeServer, Reply

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
END = START + timedelta(minutes=3)
T0 = START.timestamp()
QUERY = 'sum(increase(chat_messages_created_total{region="eu-west-1"}[1m]))'
PATH = "/api/v1/query_range"


def source(url: str, env: dict[str, str] | None = None, **config: object) -> PrometheusSource:
    settings = PrometheusSourceConfig(type="prometheus", url=url, **config)  # type: ignore[arg-type]
    return PrometheusSource(settings, ProviderContext(pipeline="eu", region="eu-west-1",
                                                      env=env or {}))


def matrix(*series: list[str]) -> Reply:
    return Reply(json={"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"instance": f"host-{n}"},
         "values": [[T0 + 60 * k, v] for k, v in enumerate(values)]}
        for n, values in enumerate(series)]}})


@pytest.fixture
def vendor():
    with FakeServer() as fake:
        yield fake


def test_a_range_query_summed_over_series(vendor: FakeServer) -> None:
    vendor.route("GET", PATH, matrix(["10", "11", "NaN", "13"], ["1", "2", "3", "4"]))
    series = source(vendor.url).fetch(QUERY, START, END, 60)
    assert [(p.at, p.value) for p in series.points] == [
        (START + timedelta(minutes=k), v) for k, v in enumerate([11.0, 13.0, 3.0, 17.0])]
    sent = vendor.requests[0]
    assert sent.query["query"] == [
        'sum(increase(chat_messages_created_total{region="eu-west-1"}[1m]))']
    assert float(sent.query["start"][0]) == T0
    assert float(sent.query["end"][0]) == T0 + 180
    assert sent.query["step"] == ["60s"]
    assert "authorization" not in sent.headers


def test_the_bearer_token_comes_from_the_named_environment_variable(vendor: FakeServer) -> None:
    vendor.route("GET", PATH, matrix(["5"]))
    series = source(vendor.url, env={"PROM_TOKEN": "tok-123"}, token_env="PROM_TOKEN").fetch(
        QUERY, START, END, 60)
    assert not series.no_data
    assert vendor.requests[0].headers["authorization"] == "Bearer tok-123"


def test_a_missing_token_is_no_data_without_asking(vendor: FakeServer) -> None:
    series = source(vendor.url, token_env="PROM_TOKEN").fetch(QUERY, START, END, 60)
    assert series.error == "prometheus: PROM_TOKEN is not set"
    assert vendor.requests == []


FAILURES = {
    "forbidden": (Reply(status=403, body="forbidden"), "HTTP 403"),
    "server error": (Reply(status=500, json={"status": "error", "errorType": "internal",
                                             "error": "query engine crashed"}),
                     "query engine crashed"),
    "unavailable": (Reply(status=503, json={"status": "error", "errorType": "unavailable",
                                            "error": "too many queries"}), "HTTP 503"),
    "bad query": (Reply(status=400, json={"status": "error", "errorType": "bad_data",
                                          "error": "parse error at char 5"}), "bad_data"),
    "malformed JSON": (Reply(body='{"status": "success", "data": {'), "not JSON"),
    "empty body": (Reply(body=""), "not JSON"),
    "not an object": (Reply(json=[1, 2]), "unexpected answer"),
    "empty object": (Reply(json={}), "HTTP 200"),
    "no series": (matrix(), "no series matched"),
    "a vector, not a range": (Reply(json={"status": "success", "data": {
        "resultType": "vector", "result": [{"metric": {}, "value": [T0, "1"]}]}}), "matrix"),
    "series without values": (Reply(json={"status": "success", "data": {
        "resultType": "matrix", "result": [{"metric": {}}]}}), "malformed"),
    "only NaN values": (matrix(["NaN", "+Inf"]), "no data points"),
}


@pytest.mark.parametrize("reply, reason", FAILURES.values(), ids=FAILURES.keys())
def test_failures_are_no_data(vendor: FakeServer, reply: Reply, reason: str) -> None:
    vendor.route("GET", PATH, reply)
    series = source(vendor.url, env={"PROM_TOKEN": "tok-secret"}, token_env="PROM_TOKEN").fetch(
        QUERY, START, END, 60)
    assert series.no_data
    assert reason in (series.error or "")
    assert "tok-secret" not in (series.error or "")


def test_a_slow_answer_is_no_data(vendor: FakeServer) -> None:
    vendor.route("GET", PATH, Reply(json={"status": "success"}, delay=2.0))
    series = source(vendor.url, timeout=0.3).fetch(QUERY, START, END, 60)
    assert series.no_data
    assert series.error == "prometheus: no answer within 0.3 s"


def test_an_unreachable_server_is_no_data() -> None:
    with FakeServer() as gone:
        url = gone.url
    series = source(url).fetch(QUERY, START, END, 60)
    assert series.no_data
    assert "ConnectionError" in (series.error or "")
