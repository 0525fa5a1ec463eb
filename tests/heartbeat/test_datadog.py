"""The Datadog source through the real datadog-api-client against a local fake API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from heartbeat.datadog import DatadogSource, DatadogSourceConfig
from shiptypes import ProviderContext
from tests.fakehttp import FakeServer, Reply

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
END = START + timedelta(minutes=5)
T0 = int(START.timestamp())
ENV = {"DD_API_KEY": "api-secret-1", "DD_APP_KEY": "app-secret-2"}
QUERY = "sum:chat.messages.created{region:us-east-1}.as_count()"


def source(url: str, env: dict[str, str] = ENV, **config: object) -> DatadogSource:
    settings = DatadogSourceConfig(type="datadog", host=url, **config)  # type: ignore[arg-type]
    return DatadogSource(settings, ProviderContext(pipeline="us", region="us-east-1", env=env))


def pointlist(values: list[float | None], interval: int = 60) -> list[list[float | None]]:
    return [[(T0 + k * interval) * 1000.0, v] for k, v in enumerate(values)]


def answer(*series: list[list[float | None]], interval: int = 60) -> Reply:
    return Reply(json={"status": "ok", "res_type": "time_series", "series": [
        {"metric": "chat.messages.created", "interval": interval, "pointlist": p} for p in series]})


@pytest.fixture
def vendor():
    with FakeServer() as fake:
        yield fake


def test_points_summed_per_window_as_a_rate_per_minute(vendor: FakeServer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DD_API_KEY", "process-key-not-the-pipelines")
    vendor.route("GET", "/api/v1/query", answer(pointlist([100, 110, None, 120, 130, 140]),
                                                pointlist([1, 2, 3, 4, 5, 6])))
    series = source(vendor.url).fetch(QUERY, START, END, 60)
    assert series.error is None
    # The window from END on is still filling: it is left out rather than read as a drop.
    assert [p.value for p in series.points] == [101, 112, 3, 124, 135]
    assert series.points[0].at == START
    sent = vendor.requests[0]
    assert sent.query["query"] == [
        "sum:chat.messages.created{region:us-east-1}.as_count().rollup(sum, 60)"]
    assert (sent.query["from"], sent.query["to"]) == ([str(T0)], [str(T0 + 300)])
    assert sent.headers["dd-api-key"] == "api-secret-1"
    assert sent.headers["dd-application-key"] == "app-secret-2"


def test_windows_still_arriving_are_left_out_when_asked(vendor: FakeServer) -> None:
    vendor.route("GET", "/api/v1/query", answer(pointlist([100, 100, 100, 60, 20])))
    series = source(vendor.url, settle=120).fetch(QUERY, START, END, 60)
    assert [p.value for p in series.points] == [100, 100, 100]


def test_sum_rollups_longer_than_a_minute_become_per_minute(vendor: FakeServer) -> None:
    vendor.route("GET", "/api/v1/query", answer(pointlist([600, 300], interval=300),
                                                interval=300))
    series = source(vendor.url).fetch("sum:m{*}.as_count()", START,
                                      START + timedelta(minutes=10), 300)
    assert [p.value for p in series.points] == [120, 60]


def test_a_query_with_its_own_rollup_is_sent_as_written(vendor: FakeServer) -> None:
    vendor.route("GET", "/api/v1/query", answer(pointlist([5, 7])))
    series = source(vendor.url, rollup="avg").fetch("avg:m{*}.rollup(avg, 60)", START,
                                                    START + timedelta(minutes=2), 60)
    assert [p.value for p in series.points] == [5, 7]
    assert vendor.requests[0].query["query"] == ["avg:m{*}.rollup(avg, 60)"]


FAILURES = {
    "forbidden": (Reply(status=403, json={"errors": ["Forbidden"]}), "HTTP 403"),
    "server error": (Reply(status=500, json={"errors": ["Internal Server Error"]}), "HTTP 500"),
    "bad gateway, not JSON": (Reply(status=502, body="<html>bad gateway</html>"), "HTTP 502"),
    "malformed JSON": (Reply(body='{"series": [', headers={"Content-Type": "application/json"}),
                       "datadog:"),
    "wrong shape": (Reply(json={"series": "none"}), "datadog:"),
    "empty object": (Reply(json={}), "no series"),
    "no series": (Reply(json={"status": "ok", "series": []}), "no series"),
    "series without points": (answer([]), "no data points"),
    "only null points": (answer(pointlist([None, None])), "no data points"),
    "query error": (Reply(json={"status": "error", "error": "bad query syntax"}),
                    "bad query syntax"),
}


@pytest.mark.parametrize("reply, reason", FAILURES.values(), ids=FAILURES.keys())
def test_failures_are_no_data(vendor: FakeServer, reply: Reply, reason: str) -> None:
    vendor.route("GET", "/api/v1/query", reply)
    series = source(vendor.url).fetch(QUERY, START, END, 60)
    assert series.no_data
    assert reason in (series.error or "")
    assert not any(secret in (series.error or "") for secret in ENV.values())


def test_a_slow_answer_is_no_data_after_one_try(vendor: FakeServer) -> None:
    vendor.route("GET", "/api/v1/query", Reply(json={"series": []}, delay=2.0))
    series = source(vendor.url, timeout=0.3).fetch(QUERY, START, END, 60)
    assert series.no_data
    assert series.error == "datadog: no answer within 0.3 s"
    assert len(vendor.requests) == 1


def test_an_unreachable_api_is_no_data() -> None:
    with FakeServer() as gone:
        url = gone.url
    series = source(url, timeout=1).fetch(QUERY, START, END, 60)
    assert series.no_data
    assert "Connection refused" in (series.error or "")


def test_missing_keys_are_no_data_without_asking(vendor: FakeServer) -> None:
    series = source(vendor.url, env={"DD_API_KEY": "only-one"}).fetch(QUERY, START, END, 60)
    assert series.error == "datadog: DD_APP_KEY not set"
    assert vendor.requests == []


@pytest.mark.parametrize("site, env", [("datadog.invalid", ENV),
                                       (None, {**ENV, "DD_SITE": "datadog.invalid"})])
def test_an_unknown_site_is_no_data(site: str | None, env: dict[str, str]) -> None:
    settings = DatadogSourceConfig(type="datadog", site=site, timeout=1)
    context = ProviderContext(pipeline="us", region="us-east-1", env=env)
    series = DatadogSource(settings, context).fetch(QUERY, START, END, 60)
    assert series.no_data and "datadog.invalid" in (series.error or "")
