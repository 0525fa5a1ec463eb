"""Hostile requests to ship serve's app, driven through its ASGI interface so a test can
count how much of a body the server pulled: unsigned bodies are refused unread, bodies are
cut at their endpoint's limit whether they declare a length or come chunked, at most two
unverified bodies are read at once, and a signed payload with wrong types, ids, depth or
numbers is a 400/413 naming the field that changes nothing in the store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
from starlette.requests import Request

from orchestrator import config
from orchestrator.intake import MAX_COMMITS, parse_push
from orchestrator.runner import Runner
from orchestrator.runtime import Ship
from orchestrator.server import MAX_BODY, MAX_SLACK_BODY, create_app
from orchestrator.store import ID_MAX, Store, StoreError
from orchestrator.untrusted import BodyReader, BodyRefused, release_number
from tests.conftest import SIM_PIPELINES
from tests.serve.conftest import (
    GITHUB_SECRET,
    SLACK_SECRET,
    github_signature,
    press,
    push,
    sha,
    slack_headers,
)

ENV = {"GITHUB_WEBHOOK_SECRET": GITHUB_SECRET, "SLACK_SIGNING_SECRET": SLACK_SECRET}
MB = 1024 * 1024
WRONG_SIGNATURE = "sha256=" + "0" * 64  # well-formed, so the body is read, then refused


class Kicks(Runner):
    """A runner that notes which pipelines it was asked to ship, and ships nothing."""

    def __init__(self, ship: Ship) -> None:
        super().__init__(ship)
        self.kicked: list[str] = []

    def kick(self, pipeline: str, actor: str = "ship") -> None:  # type: ignore[override]
        self.kicked.append(pipeline)


@dataclass
class Sent:
    status: int
    answer: dict[str, Any]
    headers: dict[str, str]
    pulled: int  # body chunks the server asked for


def call(app: Any, path: str, headers: dict[str, str], chunks: list[bytes]) -> Sent:
    """One POST through the app's ASGI interface, its body in `chunks`."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 40000),
             "server": ("ship", 80),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    pulled = 0
    out: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled == len(chunks):
            await asyncio.Event().wait()  # a client that sends nothing more
        pulled += 1
        return {"type": "http.request", "body": chunks[pulled - 1],
                "more_body": pulled < len(chunks)}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            out["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return Sent(out["status"], json.loads(out["body"]), out["headers"], pulled)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Any, Ship, Kicks]]:
    ship = Ship(config.parse(SIM_PIPELINES), Store(f"sqlite:///{tmp_path}/ship.db"), env=ENV)
    runner = Kicks(ship)
    yield create_app(ship, runner, env=ENV), ship, runner
    ship.store.close()


def recorded(ship: Ship) -> tuple[int, int, int]:
    """Merges queued, events and releases: what a refused request must leave as it was."""
    store = ship.store
    return (store.pipeline_state("us").pending_merges + store.pipeline_state("eu").pending_merges,
            len(store.events("us", limit=100_000)) + len(store.events("eu", limit=100_000)),
            len(store.releases("us")) + len(store.releases("eu")))


def github(app: Any, body: bytes, signature: str | None = None, event: str = "push",
           chunks: int = 1, **headers: str) -> Sent:
    size = -(-len(body) // chunks)
    sign = {"x-hub-signature-256": signature or github_signature(GITHUB_SECRET, body)}
    return call(app, "/webhooks/github", {"x-github-event": event, **sign, **headers},
                [body[i:i + size] for i in range(0, len(body), size)] or [b""])


# --- bodies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path,headers", [
    ("/webhooks/github", {"x-github-event": "push"}),
    ("/webhooks/github", {"x-hub-signature-256": "sha1=abc"}),
    ("/webhooks/github", {"x-hub-signature-256": "sha256=not-hex"}),
    ("/slack/interactions", {}),
    ("/slack/interactions", {"x-slack-signature": "v0=" + "0" * 64}),
    ("/slack/interactions", {"x-slack-signature": "v0=" + "0" * 64,
                             "x-slack-request-timestamp": "1531420618"}),  # stale
    ("/slack/interactions", {"x-slack-signature": "v0=" + "0" * 64,
                             "x-slack-request-timestamp": "²"}),
])
def test_an_unsigned_request_is_refused_before_a_byte_of_its_body_is_read(
        world: tuple[Any, Ship, Kicks], path: str, headers: dict[str, str]) -> None:
    app, ship, _ = world
    sent = call(app, path, {"transfer-encoding": "chunked", **headers}, [b"x" * MB] * 300)
    assert sent.status == 401 and "signature" in sent.answer["error"].lower()
    assert sent.pulled == 0 and sent.headers["connection"] == "close"
    assert recorded(ship) == (0, 0, 0)


def test_without_secrets_requests_are_refused_unread(tmp_path: Path) -> None:
    ship = Ship(config.parse(SIM_PIPELINES), Store(f"sqlite:///{tmp_path}/ship.db"), env={})
    app = create_app(ship, Runner(ship), env={})
    for path, secret in (("/webhooks/github", "GITHUB_WEBHOOK_SECRET"),
                         ("/slack/interactions", "SLACK_SIGNING_SECRET")):
        sent = call(app, path, {"x-hub-signature-256": WRONG_SIGNATURE,
                                **slack_headers(b"")}, [b"x" * MB] * 30)
        assert sent.status == 503 and secret in sent.answer["error"] and sent.pulled == 0


@pytest.mark.parametrize("path,limit,headers", [
    ("/webhooks/github", MAX_BODY, lambda: {"x-hub-signature-256": WRONG_SIGNATURE}),
    # Signed when the test runs, not when it is collected: Slack's signature goes stale
    # after 5 minutes, and a whole suite takes longer than that to reach this test.
    ("/slack/interactions", MAX_SLACK_BODY, lambda: slack_headers(b"whatever")),
])
def test_a_chunked_body_is_cut_as_soon_as_it_passes_the_limit(
        world: tuple[Any, Ship, Kicks], path: str, limit: int,
        headers: Callable[[], dict[str, str]]) -> None:
    app, ship, _ = world
    chunks = [b"{" * (limit // 8)] * 40  # five times the limit, with no Content-Length
    sent = call(app, path, {"transfer-encoding": "chunked", **headers()}, chunks)
    assert sent.status == 413 and f"at most {limit:,} bytes" in sent.answer["error"]
    assert sent.pulled == 9 and sent.headers["connection"] == "close"  # 8 fit, the 9th passes
    assert recorded(ship) == (0, 0, 0)


def test_a_declared_length_over_the_limit_is_refused_unread(
        world: tuple[Any, Ship, Kicks]) -> None:
    app, ship, _ = world
    for length in (str(MAX_BODY + 1), "10" * 40, "-5", "12, 12"):
        sent = call(app, "/webhooks/github", {"x-hub-signature-256": WRONG_SIGNATURE,
                                              "content-length": length}, [b"{}"])
        assert (sent.status, sent.pulled) == (413, 0), length
    assert recorded(ship) == (0, 0, 0)


def test_only_so_many_unverified_bodies_are_read_at_once() -> None:
    reader = BodyReader(limit=MB, at_once=2, wait=0.05)

    async def scenario() -> list[BodyRefused | bytes]:
        started, release = asyncio.Semaphore(0), asyncio.Event()

        def request() -> Request:
            first = True

            async def receive() -> dict[str, Any]:
                nonlocal first
                if first:
                    first = False
                    started.release()
                    return {"type": "http.request", "body": b"part", "more_body": True}
                await release.wait()
                return {"type": "http.request", "body": b"", "more_body": False}
            return Request({"type": "http", "method": "POST", "headers": []}, receive)

        async def read() -> BodyRefused | bytes:
            try:
                return await reader.read(request())
            except BodyRefused as refused:
                return refused

        held = [asyncio.create_task(read()) for _ in range(2)]
        for _ in held:
            await started.acquire()  # both are reading: every place is taken
        third = await read()
        release.set()
        return [third, *await asyncio.gather(*held)]

    third, first, second = asyncio.run(scenario())
    assert isinstance(third, BodyRefused) and third.status == 503
    assert first == second == b"part"


# --- signed payloads of the wrong shape ------------------------------------------------------


def mangled(change: Any) -> bytes:
    payload = push([sha(n) for n in range(5)])
    change(payload)
    return json.dumps(payload).encode()


def setter(path: str, value: Any) -> Any:
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]

    def change(payload: Any) -> None:
        for key in parents:
            payload = payload[key]
        payload[last] = value
    return change


@pytest.mark.parametrize("path,value,named", [
    ("commits.3.author", "ann", "commits[3].author: expected an object, got a string"),
    ("commits.3.author", ["ann"], "commits[3].author: expected an object, got a list"),
    ("commits.0.author.username", {"x": 1}, "commits[0].author.username: expected a string"),
    ("commits", {"0": {}}, "commits: expected a list, got an object"),
    ("commits.1", "deadbeef", "commits[1]: expected an object, got a string"),
    ("commits.2.id", 12345, "commits[2].id: expected a string, got a number"),
    ("commits.2.id", "g" * 40, "commits[2].id: 'gggg"),
    ("commits.2.id", "abc1234", "commits[2].id: 'abc1234' is not a commit id"),
    ("commits.4.message", ["x"], "commits[4].message: expected a string, got a list"),
    ("commits.4.timestamp", "yesterday", "commits[4].timestamp: 'yesterday' is not an ISO"),
    ("commits.4.timestamp", 17, "commits[4].timestamp: expected a string"),
    ("repository", "example/chat", "repository: expected an object, got a string"),
    ("repository.full_name", None, "repository.full_name: expected a string, got nothing"),
    ("ref", ["refs/heads/main"], "ref: expected a string, got a list"),
    ("deleted", "false", "deleted: expected true or false, got a string"),
])
def test_a_signed_push_with_a_field_of_the_wrong_type_is_400_naming_it(
        world: tuple[Any, Ship, Kicks], path: str, value: Any, named: str) -> None:
    app, ship, runner = world
    sent = github(app, mangled(setter(path, value)))
    assert sent.status == 400 and sent.answer["error"].startswith(named), sent.answer
    assert recorded(ship) == (0, 0, 0) and runner.kicked == []


@pytest.mark.parametrize("body,named", [
    (b"[" * 100_000 + b"]" * 100_000, "body: JSON nested too deeply"),
    (b'{"ref": ' + b"[" * 100_000, "body: JSON nested too deeply"),
    (b"\xff\xfe{}", "body: not JSON"),
    (b"[1, 2]", "body: expected an object, got a list"),
    (b"null", "body: expected an object, got nothing"),
])
def test_a_signed_body_that_is_no_json_object_is_400(
        world: tuple[Any, Ship, Kicks], body: bytes, named: str) -> None:
    app, ship, _ = world
    sent = github(app, body, chunks=3)
    assert sent.status == 400 and sent.answer["error"].startswith(named)
    assert recorded(ship) == (0, 0, 0)


def test_a_push_of_more_commits_than_github_sends_is_413(
        world: tuple[Any, Ship, Kicks]) -> None:
    app, ship, runner = world
    sent = github(app, json.dumps(push([sha(n) for n in range(10_000)])).encode())
    assert sent.status == 413
    assert sent.answer["error"] == ("commits: 10,000 in one push; a push event carries at "
                                    "most 2,048 (GitHub's own cap)")
    assert recorded(ship) == (0, 0, 0) and runner.kicked == []


def test_a_push_of_2048_commits_is_queued_whole_in_order_and_once(
        world: tuple[Any, Ship, Kicks]) -> None:
    app, ship, runner = world
    shas = [sha(n, "many") for n in range(MAX_COMMITS)]
    body = json.dumps(push(shas)).encode()
    sent = github(app, body, **{"x-github-delivery": "big-1"})
    assert sent.status == 200
    assert sent.answer["pipelines"]["us"] == {"queued": MAX_COMMITS, "duplicate": 0}
    assert [c.sha for c in ship.store.pending_merges("us", 5000)] == shas
    assert sorted(runner.kicked) == ["eu", "us"]
    again = github(app, body, **{"x-github-delivery": "big-1"})  # a redelivery
    assert again.answer["pipelines"]["us"] == {"queued": 0, "duplicate": MAX_COMMITS}
    assert recorded(ship)[:2] == (2 * MAX_COMMITS, 2 * MAX_COMMITS)


def test_upper_case_and_sha256_commit_ids_are_taken() -> None:
    long_id = "ab" * 32
    parsed = parse_push(json.dumps(push([sha(1).upper(), long_id])).encode())
    assert [c.sha for c in parsed.commits] == [sha(1), long_id]


# --- numbers from outside ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [10**30, -1, 0, ID_MAX + 1, True, 1.5, "1e3", " ", "+3",
                                   "١٢", "1_000", None, [1], "9" * 5000])
def test_a_release_number_from_outside_is_refused_with_its_field(value: Any) -> None:
    with pytest.raises(ValueError, match=r"^release: .* is not a release number \(1 to "):
        release_number(value)


def test_release_numbers_in_range_are_taken() -> None:
    assert [release_number(v) for v in (1, "7", " 42 ", ID_MAX, str(ID_MAX))] == [
        1, 7, 42, ID_MAX, ID_MAX]


def test_the_store_finds_nothing_for_numbers_no_row_can_have(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/ship.db")
    for number in (10**30, 2**63, ID_MAX + 1, 0, -1, -(10**30)):
        assert store.release_by_number("us", number) is None
        assert store.events("us", release_id=number) == []
        with pytest.raises(StoreError, match="no release with id"):
            store.release(number)
    assert store.releases("us", limit=10**30) == [] and store.locks("us", limit=-1) == []
    assert store.pending_merges("us", 10**30) == []
    store.close()


@pytest.mark.parametrize("release,named", [
    (10**30, "actions[0].value.release: 1000000000000000000000000000000 is not a release"),
    (-1, "actions[0].value.release: -1 is not a release number"),
    ("abc", "actions[0].value.release: 'abc' is not a release number"),
    (True, "actions[0].value.release: True is not a release number"),
])
def test_a_signed_slack_press_with_a_release_out_of_range_is_400(
        world: tuple[Any, Ship, Kicks], release: Any, named: str) -> None:
    app, ship, _ = world
    body = press("ship_rollback", "us", release)
    sent = call(app, "/slack/interactions", slack_headers(body), [body])
    assert sent.status == 400 and sent.answer["error"].startswith(named)
    assert recorded(ship) == (0, 0, 0)


def slack_payload(change: Any) -> bytes:
    payload = json.loads(parse_qs(press("ship_lock", "us", 1).decode())["payload"][0])
    change(payload)
    return urlencode({"payload": json.dumps(payload)}).encode()


@pytest.mark.parametrize("body,named", [
    (slack_payload(setter("user", "U_ALICE")), "user: expected an object, got a string"),
    (slack_payload(setter("user.id", ["U_ALICE"])), "user.id: expected a string, got a list"),
    (slack_payload(setter("actions", {})), "actions: expected a list, got an object"),
    (slack_payload(setter("actions", [])), "actions[0]: expected an object, got nothing"),
    (slack_payload(setter("actions.0.value", "{")), "actions[0].value: not JSON"),
    (slack_payload(setter("actions.0.value", "[" * 100_000)),
     "actions[0].value: JSON nested too deeply"),
    (slack_payload(setter("actions.0.value", json.dumps({"pipeline": ["us"], "release": 1}))),
     "actions[0].value.pipeline: expected a string, got a list"),
    (slack_payload(setter("actions.0.action_id", "ship_delete")),
     "actions[0].action_id: 'ship_delete' is not a ship button"),
    (slack_payload(setter("response_url", 7)), "response_url: expected a string"),
    (urlencode({"payload": "[" * 100_000}).encode(), "payload: JSON nested too deeply"),
    (b"payload=%7B%7D&&", "body: not a form"),
    (b"other=1", "payload: missing"),
])
def test_a_signed_slack_press_of_the_wrong_shape_is_400_naming_the_field(
        world: tuple[Any, Ship, Kicks], body: bytes, named: str) -> None:
    app, ship, _ = world
    sent = call(app, "/slack/interactions", slack_headers(body), [body])
    assert sent.status == 400 and sent.answer["error"].startswith(named), sent.answer
    assert recorded(ship) == (0, 0, 0)
