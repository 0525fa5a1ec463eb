"""The Slack buttons, pressed through a running `ship serve` with two releases shipped on
the us pipeline; Slack's Web API is a local fake that the server's WebClient talks to.

The tests share one server and run in order: refusals first (they change nothing), then
Lock and Unlock, then the rollback, which leaves the pipeline locked."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import pytest

from orchestrator.release import SHIPPED, State
from tests.serve.conftest import (
    FakeSlack,
    Serving,
    config_text,
    press,
    push,
    sha,
    slack_headers,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(scope="module")
def slack_api() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, prefect_api: str,
           slack_api: FakeSlack) -> Iterator[Serving]:
    serving = Serving(tmp_path_factory.mktemp("slack"), prefect_api,
                      config_text(slack_api.url, watch="60s", pipelines=("us",)))
    try:
        for n in (1, 2):
            serving.github(push([sha(n, "slack")], author="ann"))
            wait_for(lambda n=n: shipped(serving, n), f"us#{n} to ship", timeout=120)
        # Its watch over, nothing moves on its own: a test can tell what a press changed.
        wait_for(lambda: watched(serving, 2), "us#2's watch to end", timeout=120)
        yield serving
    finally:
        serving.stop()


def shipped(server: Serving, number: int) -> bool:
    release = server.store.release_by_number("us", number)
    return release is not None and release.state in SHIPPED


def watched(server: Serving, number: int) -> bool:
    release = server.store.release_by_number("us", number)
    return release is not None and release.state == State.DONE


def world(server: Serving) -> tuple[Any, ...]:
    """What a refused request must leave as it was."""
    store = server.store
    state = store.pipeline_state("us")
    return (len(store.events("us", limit=10_000)), state.lock, state.live.id,
            len(store.rollbacks("us")), len(store.locks("us")))


def test_forged_tampered_replayed_or_unsigned_presses_get_401(server: Serving) -> None:
    before = world(server)
    body = press("ship_lock", "us", 2)
    assert server.slack(body, headers={}).status_code == 401  # unsigned
    forged = slack_headers(body, secret="not-the-signing-secret")
    assert server.slack(body, headers=forged).status_code == 401
    tampered = press("ship_rollback", "us", 2)
    assert server.slack(tampered, headers=slack_headers(body)).status_code == 401
    replayed = slack_headers(body, when=int(time.time()) - 6 * 60)  # signed 6 minutes ago
    assert server.slack(body, headers=replayed).status_code == 401
    from_the_future = slack_headers(body, when=int(time.time()) + 6 * 60)
    assert server.slack(body, headers=from_the_future).status_code == 401
    garbled = {**slack_headers(body), "X-Slack-Request-Timestamp": "yesterday"}
    assert server.slack(body, headers=garbled).status_code == 401
    assert world(server) == before


def test_malformed_unknown_or_unallowed_presses_are_refused(server: Serving) -> None:
    before = world(server)
    for body in (b"payload=%7Bnot-json", b"text=hello",
                 urlencode({"payload": json.dumps({"type": "view_submission"})}).encode(),
                 press("ship_deploy_everything", "us", 2)):
        assert server.slack(body).status_code == 400, body
    unknown = server.slack(press("ship_lock", "mars", 2))
    assert unknown.status_code == 404 and "mars" in unknown.json()["error"]
    assert server.slack(press("ship_lock", "us", 99)).status_code == 404
    assert world(server) == before
    stranger = server.slack(press("ship_rollback", "us", 2, user="U_MALLORY", name="mallory"))
    assert stranger.status_code == 403
    state = server.store.pipeline_state("us")
    assert state.lock is None and state.live.number == 2 and server.store.rollbacks("us") == []
    [refusal] = [e for e in server.store.events("us") if e.kind == "slack_refused"]
    assert refusal.data["slack_user"] == "U_MALLORY"


def test_lock_and_unlock_from_slack_act_once_and_update_the_message(
        server: Serving, slack_api: FakeSlack) -> None:
    store = server.store
    body = press("ship_lock", "us", 2)
    headers = slack_headers(body)
    locked = server.slack(body, headers=headers)
    assert locked.status_code == 200 and locked.json()["ok"] is True
    assert server.slack(body, headers=headers).status_code == 401  # the same request again
    again = server.slack(press("ship_lock", "us", 2, response_url=f"{slack_api.url}/hooks/r1"))
    assert again.status_code == 200 and again.json()["ok"] is False  # a double click
    assert "already locked" in again.json()["text"]
    lock = store.pipeline_state("us").lock
    assert lock.owner == "alice" and not lock.auto  # U_ALICE is alice on GitHub
    assert len(store.locks("us")) == 1
    pressed = [e for e in store.events("us") if e.kind == "slack_action"]
    assert pressed[-1].actor == "alice" and pressed[-1].data["slack_user"] == "U_ALICE"
    reply = wait_for(lambda: slack_api.requests_to("/hooks/r1"), "the ephemeral reply")
    assert reply[0].json()["response_type"] == "ephemeral"
    message = release_message(store, 2)
    wait_for(lambda: any(has_button(u, "ship_unlock") and "🔒" in str(u["blocks"])
                         for u in updates_of(slack_api, message)), "the message to show the lock")

    unlocked = server.slack(press("ship_unlock", "us", 2, user="U_BOB", name="bob"))
    assert unlocked.json() == {"ok": True, "text": "us unlocked"}
    assert store.pipeline_state("us").lock is None
    assert store.locks("us")[0].released_by == "bob (Slack)"  # not in the user map
    wait_for(lambda: has_button(updates_of(slack_api, message)[-1], "ship_lock"),
             "the message to offer Lock again")


def test_a_double_click_on_roll_back_rolls_back_once_and_locks(
        server: Serving, slack_api: FakeSlack) -> None:
    store = server.store
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: server.slack(press("ship_rollback", "us", 2)),
                                range(2)))
    assert [a.status_code for a in answers] == [200, 200]
    assert sorted(a.json()["ok"] for a in answers) == [False, True]
    assert "us#2 → us#1" in next(a.json()["text"] for a in answers if a.json()["ok"])
    wait_for(lambda: store.rollbacks("us") and store.rollbacks("us")[0].outcome == "done",
             "the rollback to finish")
    late = server.slack(press("ship_rollback", "us", 2))  # a third click, after it is done
    assert late.json()["ok"] is False and "not live" in late.json()["text"]
    [rollback] = store.rollbacks("us")
    assert rollback.actor == "alice" and not rollback.auto
    state = store.pipeline_state("us")
    assert state.live.number == 1
    assert store.release_by_number("us", 2).state == State.ROLLED_BACK
    assert state.lock.owner == "alice" and not state.lock.auto  # like any manual rollback
    message = release_message(store, 2)
    wait_for(lambda: any("rolling back us#2 → us#1 (alice)" in u["text"]
                         for u in updates_of(slack_api, message)),
             "the release message to say it is being rolled back")


def release_message(store: Any, number: int) -> str:
    release = store.release_by_number("us", number)
    return wait_for(lambda: store.notice_ref(release.id, "slack"), "the release message").ref


def updates_of(slack_api: FakeSlack, ts: str) -> list[dict[str, Any]]:
    return [u for u in slack_api.calls("chat.update") if u["ts"] == ts]


def has_button(update: dict[str, Any], action_id: str) -> bool:
    return any(e.get("action_id") == action_id for e in update["blocks"][-1]["elements"])


def test_each_release_has_one_message_and_its_authors_are_asked_to_verify(
        server: Serving, slack_api: FakeSlack) -> None:
    posts = slack_api.calls("chat.postMessage")
    release_posts = [p for p in posts if "thread_ts" not in p and "<!here>" not in p["text"]]
    assert len(release_posts) == 2  # one per release, whatever happened to it since
    asks = [p for p in posts if "thread_ts" in p]
    assert asks and all(p["text"].startswith("<@U_ANN>: us#") for p in asks)
    assert {p["thread_ts"] for p in asks} <= {release_message(server.store, n) for n in (1, 2)}
