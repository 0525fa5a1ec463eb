"""`ship serve` as a real process: GitHub webhooks in, the release train, dedupe, graceful
stop on SIGTERM, and the flows served as Prefect deployments."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from orchestrator.release import IN_FLIGHT, SHIPPED, State
from orchestrator.store import Store
from tests.serve.conftest import Serving, config_text, push, sha, wait_for

pytestmark = pytest.mark.usefixtures("prefect_api")


def merged_shas(store: Store, pipeline: str) -> list[str]:
    return [c.sha for r in store.releases(pipeline) for c in r.commits]


def shipped(store: Store, pipeline: str, number: int) -> bool:
    release = store.release_by_number(pipeline, number)
    return release is not None and release.state in SHIPPED


def test_requests_are_verified_before_anything_is_read(serve: Callable[..., Serving]) -> None:
    server = serve(config_text())
    assert requests.get(f"{server.url}/healthz", timeout=5).json()["ok"] is True
    payload = push([sha(1)])
    assert server.github(payload, secret=None).status_code == 401  # unsigned
    assert server.github(payload, secret="not-the-secret").status_code == 401  # forged
    assert server.github(payload, signature="sha256=").status_code == 401
    signed_other = server.github(payload, body=b'{"ref": "x"}',
                                 signature=server_signature(push([sha(2)])))
    assert signed_other.status_code == 401  # a signature for another body: tampered
    # A bad signature is refused before the body is parsed: not JSON at all is still 401.
    assert server.github(None, body=b"{not json", secret="wrong").status_code == 401
    assert server.github(None, body=b"{not json").status_code == 400
    assert server.github({"zen": "Keep it simple."}, event="ping").json()["pong"] is True
    ignored = server.github({"action": "opened"}, event="issues")
    assert ignored.status_code == 202 and "issues" in ignored.json()["ignored"]
    elsewhere = server.github(push([sha(3)], ref="refs/heads/feature"))
    assert elsewhere.status_code == 202
    assert merged_shas(server.store, "us") == []
    assert server.store.pipeline_state("us").pending_merges == 0
    assert server.stop() == 0


def server_signature(payload: dict) -> str:
    import json

    from tests.serve.conftest import GITHUB_SECRET, github_signature

    return github_signature(GITHUB_SECRET, json.dumps(payload).encode())


def test_merges_during_a_release_ride_the_next_one_exactly_once(
        serve: Callable[..., Serving]) -> None:
    server = serve(config_text())
    store = server.store
    # Hold promotions so release 1 stays in flight, whatever the machine's speed, while
    # the 20 merges arrive; then let it go.
    for pipeline in ("us", "eu"):
        store.set_hold(pipeline, "the test holds release 1 in flight", actor="test")
    first = server.github(push([sha(0)], author="ann"))
    assert first.json()["pipelines"] == {"us": {"queued": 1, "duplicate": 0},
                                         "eu": {"queued": 1, "duplicate": 0}}
    for pipeline in ("us", "eu"):
        wait_for(lambda p=pipeline: store.pipeline_state(p).in_flight, f"{pipeline}#1 to start")

    train = [sha(n) for n in range(1, 21)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda s: server.github(push([s], author="bob")), train))
    assert [a.status_code for a in answers] == [200] * 20
    for pipeline in ("us", "eu"):
        state = store.pipeline_state(pipeline)
        assert state.in_flight.number == 1
        assert state.in_flight.state in IN_FLIGHT | {State.QUEUED}
        assert state.pending_merges == 20
        store.set_hold(pipeline, None, actor="test")
    for pipeline in ("us", "eu"):
        wait_for(lambda p=pipeline: shipped(store, p, 2), f"{pipeline}#2 to ship", timeout=120)
        assert [c.sha for c in store.release_by_number(pipeline, 1).commits] == [sha(0)]
        second = store.release_by_number(pipeline, 2)
        assert sorted(c.sha for c in second.commits) == sorted(train)
        assert second.sha == train[-1] or second.sha in train  # the newest merge it carries
        assert {c.author for c in second.commits} == {"bob"}

    # GitHub redelivers a webhook (same delivery id), and a later push repeats a commit
    # that shipped already next to a new one: nothing ships twice, nothing is lost.
    again = server.github(push([train[5]], author="bob"), delivery="delivery-7")
    assert again.status_code == 200
    assert again.json()["pipelines"]["us"] == {"queued": 0, "duplicate": 1}
    overlap = server.github(push([train[6], sha(99)], author="cy"))
    assert overlap.json()["pipelines"]["us"] == {"queued": 1, "duplicate": 1}
    for pipeline in ("us", "eu"):
        wait_for(lambda p=pipeline: shipped(store, p, 3), f"{pipeline}#3 to ship", timeout=120)
        assert [c.sha for c in store.release_by_number(pipeline, 3).commits] == [sha(99)]
        counts = Counter(merged_shas(store, pipeline))
        assert set(counts) == {sha(0), sha(99), *train}
        assert set(counts.values()) == {1}  # each commit in exactly one release
        assert store.pipeline_state(pipeline).pending_merges == 0
        assert store.release_by_number(pipeline, 4) is None
    assert server.stop() == 0


def test_sigterm_lets_the_release_in_flight_finish_then_exits_0(
        serve: Callable[..., Serving], prefect_api: str) -> None:
    server = serve(config_text(pipelines=("us",)), "--prefect-deployments",
                   "--drain-timeout", "60")
    assert sorted(deployment_names(prefect_api)) >= ["release/ship", "rollback/ship",
                                                     "watch/ship"]
    store = server.store
    store.set_hold("us", "the test holds the release", actor="test")
    server.github(push([sha(1, "term")]))
    wait_for(lambda: store.pipeline_state("us").in_flight, "us#1 to start")
    server.process.send_signal(15)
    wait_for(lambda: "stopping" in server.log(), "ship serve to begin stopping")
    assert refused(lambda: server.github(push([sha(2, "term")])))  # no more webhooks
    assert server.process.poll() is None  # still waiting for the release in flight
    store.set_hold("us", None, actor="test")
    assert server.process.wait(60) == 0
    release = store.release_by_number("us", 1)
    assert release.state in SHIPPED
    assert store.pipeline_state("us").in_flight is None
    assert "ship serve stopped" in server.log()
    # Prefect's own SIGTERM handling is off in ship serve: the release flow was not crashed.
    assert "us-release-1' - Crash" not in server.log()
    assert "TerminationSignal" not in server.log()


def test_a_release_cut_at_the_drain_timeout_ships_after_a_restart(
        serve: Callable[..., Serving]) -> None:
    server = serve(config_text(pipelines=("us",)), "--drain-timeout", "0.5")
    store = server.store
    store.set_hold("us", "the test holds the release", actor="test")
    server.github(push([sha(1, "cut")]))
    wait_for(lambda: store.pipeline_state("us").in_flight, "us#1 to start")
    assert server.stop() == 0
    assert "cut short on us" in server.log()
    cut = store.release_by_number("us", 1)
    assert cut.state == State.FAILED and "ship serve stopped" in cut.reason
    state = store.pipeline_state("us")
    assert state.in_flight is None and state.pending_merges == 1  # queued again, not lost

    store.set_hold("us", None, actor="test")
    again = serve(config_text(pipelines=("us",)))
    wait_for(lambda: shipped(again.store, "us", 2), "us#2 to ship after the restart")
    assert [c.sha for c in again.store.release_by_number("us", 2).commits] == [sha(1, "cut")]
    assert again.stop() == 0


def refused(send: Callable[[], requests.Response]) -> bool:
    """Refused: 503 while the listener closes, no connection once it has."""
    try:
        return send().status_code == 503
    except requests.ConnectionError:
        return True


def deployment_names(api_url: str) -> list[str]:
    from prefect.client.orchestration import get_client

    async def names() -> list[str]:
        async with get_client() as client:
            deployments = await client.read_deployments()
            flows = {f.id: f.name for f in await client.read_flows()}
            return [f"{flows[d.flow_id]}/{d.name}" for d in deployments]

    return asyncio.run(names())
