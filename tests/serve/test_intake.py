"""Signatures (with the vendors' published examples as test vectors) and push parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from orchestrator import config
from orchestrator.intake import BadPayload, parse_push, pipelines_for, signature, verify
from orchestrator.slack_actions import SlackActions
from tests.conftest import SIM_PIPELINES
from tests.serve.conftest import push, sha

# GitHub's docs, "Validating webhook deliveries": secret, payload and expected signature.
GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

# Slack's docs, "Verifying requests from Slack": the worked example.
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_TIMESTAMP = 1531420618
SLACK_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
    b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
    b"command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands"
    b"%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
    b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
SLACK_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


def test_github_published_example_verifies() -> None:
    assert signature(GITHUB_SECRET, GITHUB_BODY) == GITHUB_SIGNATURE
    assert verify(GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE)
    assert not verify(GITHUB_SECRET, b"Hello, World?", GITHUB_SIGNATURE)  # tampered
    assert not verify("another secret", GITHUB_BODY, GITHUB_SIGNATURE)  # forged
    assert not verify(GITHUB_SECRET, GITHUB_BODY, None)  # unsigned
    assert not verify(GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE.replace("sha256", "sha1"))
    assert not verify("", GITHUB_BODY, signature("", GITHUB_BODY))  # no secret: refuse all


class FixedClock:
    def __init__(self, now: float) -> None:
        self.at = now

    def now(self) -> float:
        return self.at


def slack_verifies(at: float, body: bytes = SLACK_BODY, sig: str = SLACK_SIGNATURE,
                   timestamp: str = str(SLACK_TIMESTAMP)) -> bool:
    actions = SlackActions(None, None, SLACK_SECRET, FixedClock(at))  # type: ignore[arg-type]
    return actions.verify(body, {"x-slack-request-timestamp": timestamp,
                                 "x-slack-signature": sig})


def test_slack_published_example_verifies_and_replays_are_refused() -> None:
    assert slack_verifies(SLACK_TIMESTAMP)
    assert slack_verifies(SLACK_TIMESTAMP + 299)
    assert not slack_verifies(SLACK_TIMESTAMP + 301)  # a replay older than 5 minutes
    assert not slack_verifies(SLACK_TIMESTAMP, body=SLACK_BODY.replace(b"roadrunner", b"coyote"))
    assert not slack_verifies(SLACK_TIMESTAMP, sig="v0=" + "0" * 64)
    assert not slack_verifies(SLACK_TIMESTAMP, timestamp="not-a-number")
    assert not slack_verifies(SLACK_TIMESTAMP, timestamp=str(SLACK_TIMESTAMP + 1))


def test_a_push_goes_to_every_pipeline_on_its_repository_and_branch() -> None:
    data = yaml.safe_load(SIM_PIPELINES)
    data["pipelines"]["au"] = {**data["pipelines"]["us"], "region": "ap-southeast-2",
                               "repo": {"name": "example/chat", "branch": "release"}}
    data["pipelines"]["ops"] = {**data["pipelines"]["us"], "repo": {"name": "example/ops"}}
    loaded = config.parse(yaml.safe_dump(data))
    main = parse_push(json.dumps(push([sha(1)], repo="Example/Chat")).encode())
    assert sorted(pipelines_for(loaded, main)) == ["eu", "us"]
    release = parse_push(json.dumps(push([sha(1)], ref="refs/heads/release")).encode())
    assert pipelines_for(loaded, release) == ["au"]
    tag = parse_push(json.dumps(push([sha(1)], ref="refs/tags/main")).encode())
    assert pipelines_for(loaded, tag) == []


def test_push_commits_keep_their_order_and_their_authors_logins() -> None:
    payload = push([sha(1), sha(2)], author="ann")
    payload["commits"][1]["author"] = {"name": "Bob Builder", "email": "bob@example.com"}
    parsed = parse_push(json.dumps(payload).encode())
    assert [c.sha for c in parsed.commits] == [sha(1), sha(2)]
    assert [c.author for c in parsed.commits] == ["ann", "Bob Builder"]
    assert parsed.commits[0].message == f"change {sha(1)[:7]}"
    assert parse_push(json.dumps(push([])).encode()).commits == ()


@pytest.mark.parametrize("body", [
    b"{not json", b"[]", b'{"ref": "refs/heads/main"}',
    json.dumps({**push([sha(1)]), "commits": [{"id": 7}]}).encode(),
    json.dumps({**push([sha(1)]), "commits": [{"message": "no id"}]}).encode(),
])
def test_a_malformed_push_is_refused(body: bytes) -> None:
    with pytest.raises(BadPayload):
        parse_push(body)


def test_without_secrets_the_endpoints_refuse_everything(tmp_path: Path) -> None:
    import asyncio

    import httpx

    from orchestrator.runner import Runner
    from orchestrator.runtime import Ship
    from orchestrator.server import create_app
    from orchestrator.store import Store

    ship = Ship(config.parse(SIM_PIPELINES), Store(f"sqlite:///{tmp_path}/ship.db"), env={})
    app = create_app(ship, Runner(ship), env={})
    body = json.dumps(push([sha(1)])).encode()

    async def requests() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://ship") as client:
            return [await client.post("/webhooks/github", content=body, headers={
                        "X-GitHub-Event": "push", "X-Hub-Signature-256": signature("", body)}),
                    await client.post("/slack/interactions", content=b"payload=%7B%7D"),
                    await client.get("/healthz")]

    github, slack, health = asyncio.run(requests())
    assert github.status_code == 503 and "GITHUB_WEBHOOK_SECRET" in github.json()["error"]
    assert slack.status_code == 503 and "SLACK_SIGNING_SECRET" in slack.json()["error"]
    assert health.json()["pipelines"] == ["us", "eu"]
    assert ship.store.pipeline_state("us").pending_merges == 0
