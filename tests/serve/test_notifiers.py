"""The Slack and GitHub notifiers with their real clients (slack-sdk's WebClient, requests)
against local fake APIs, and the notifiers pipelines.yaml asks for."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from orchestrator import config
from orchestrator.notify import Notice
from orchestrator.notify.console import ConsoleNotifier
from orchestrator.notify.github import GitHubDeploymentNotifier
from orchestrator.notify.outbox import Outbox, Queued
from orchestrator.notify.slack import SlackNotifier
from orchestrator.release import State
from orchestrator.runtime import Ship
from orchestrator.store import Release, Store
from shiptypes import Commit, GateResult, Link, ProviderContext, ScaledClock
from tests.conftest import SIM_PIPELINES
from tests.fakehttp import FakeServer, Reply
from tests.serve.conftest import CHANNEL_ID, SLACK_TOKEN, FakeSlack, sha

LOGS = Link("Logs", "https://logs.example.com/us-1/us-1")
USERS = {"ann": "U_ANN"}
GITHUB_TOKEN = "ghp_testtoken0123456789"


class Waits(list[float]):
    """The outbox's pauses between tries, kept instead of slept."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path}/ship.db", ScaledClock(60))
    yield store
    store.close()


def a_release(store: Store, authors: tuple[str, ...] = ("ann", "bob", "ann")) -> Release:
    for n, author in enumerate(authors):
        store.record_merge("us", Commit(sha(n, "n"), author, f"change {n} <b>&\n\nbody"))
    return store.start_release("us", 50, "test").release


def slack(store: Store, api: FakeServer, waits: Waits | None = None,
          env: dict[str, str] | None = None, **settings: object) -> SlackNotifier:
    cfg = config.SlackNotify.model_validate({"channel": "#deploys", "api_url": f"{api.url}/api/",
                                             "users": USERS, "backoff": 0.5, **settings})
    context = ProviderContext("us", "us-1", env={"SLACK_BOT_TOKEN": SLACK_TOKEN}
                              if env is None else env)
    return SlackNotifier(cfg, context, store,
                         outbox=Outbox("slack", store, cfg, wait=waits if waits is not None
                                       else Waits()))


def tell(store: Store, notifier: SlackNotifier | GitHubDeploymentNotifier, release: Release,
         kind: str, text: str, level: str = "info") -> None:
    current = store.release(release.id)
    notifier.notify(Notice(pipeline="us", kind=kind, text=text, level=level,  # type: ignore[arg-type]
                           release_id=current.id, release_number=current.number,
                           sha=current.sha, state=current.state.value, links=(LOGS,)))


def ship_it(store: Store, notifier: SlackNotifier, release: Release) -> None:
    """Take the release through every stage to live, telling the notifier at each."""
    for state in (State.BUILDING, State.PREPROD, State.GATING):
        store.move(release.id, state)
        tell(store, notifier, release, "stage", f"{release.name} {state}")
    store.record_gate(release.id, GateResult("boot", True, "answered in 0.2s"))
    store.record_gate(release.id, GateResult("smoke", True, "4/4 checks",
                                             (Link("Run", "https://ci.example.com/r/1"),)))
    assert store.begin_promotion(release.id).won
    tell(store, notifier, release, "stage", f"{release.name} promoting")
    store.go_live(release.id)
    tell(store, notifier, release, "live", f"{release.name} is live on every host")
    assert notifier.flush(10)


def events(store: Store, kind: str) -> list[str]:
    return [e.message for e in store.events("us") if e.kind == kind]


def texts(blocks: list[dict]) -> str:
    parts = []
    for block in blocks:
        if "text" in block:
            parts.append(block["text"]["text"])
        parts.extend(e.get("text", "") for e in block.get("elements", [])
                     if isinstance(e.get("text"), str))
    return "\n".join(parts)


def test_one_message_per_release_updated_in_place_at_each_stage(store: Store) -> None:
    with FakeSlack() as api:
        notifier = slack(store, api)
        release = a_release(store)
        ship_it(store, notifier, release)
        posts, updates = api.calls("chat.postMessage"), api.calls("chat.update")
    message, thread = posts  # the release message, then the call to verify in its thread
    assert message["channel"] == "#deploys" and "thread_ts" not in message
    assert len(updates) == 4  # preprod, gating, promoting, live
    assert {(u["channel"], u["ts"]) for u in updates} == {(CHANNEL_ID, "1700000000.000001")}
    assert all(r.headers["authorization"] == f"Bearer {SLACK_TOKEN}" for r in api.requests)
    final = texts(updates[-1]["blocks"])
    assert "*us#1* · *live*" in final and "is live on every host" in final
    assert "*3 commit(s)* by ann, bob" in final
    assert f"`{sha(0, 'n')[:7]}` change 0 &lt;b&gt;&amp; — ann" in final  # escaped, 1st line
    assert "queued" in final and "building" in final and "→ live" in final  # timeline
    assert "✅ *boot* answered in 0.2s" in final
    assert "✅ *smoke* 4/4 checks <https://ci.example.com/r/1|Run>" in final
    assert "<https://logs.example.com/us-1/us-1|Logs>" in final
    buttons = updates[-1]["blocks"][-1]["elements"]
    assert [b["action_id"] for b in buttons] == ["ship_rollback", "ship_lock"]
    assert buttons[0]["value"] == '{"pipeline": "us", "release": 1}'
    # Going live asks the authors, mentioned where the user map knows them, to verify.
    assert thread["thread_ts"] == "1700000000.000001" and thread["channel"] == CHANNEL_ID
    assert thread["text"].startswith("<@U_ANN> bob: us#1 is live. Please check")
    kept = store.notice_ref(release.id, "slack")
    assert (kept.ref, kept.data) == ("1700000000.000001", {"channel": CHANNEL_ID})


def test_a_lock_shows_on_the_message_with_an_unlock_button(store: Store) -> None:
    with FakeSlack() as api:
        notifier = slack(store, api)
        release = a_release(store)
        ship_it(store, notifier, release)
        store.take_lock("us", "carol", "investigating")
        tell(store, notifier, release, "lock", "us locked by carol")
        assert notifier.flush(10)
        last = api.calls("chat.update")[-1]
    assert "🔒 locked by hand by carol" in texts(last["blocks"])
    assert [b["action_id"] for b in last["blocks"][-1]["elements"]] == [
        "ship_rollback", "ship_unlock"]


def test_a_breach_and_a_stall_are_said_loudly(store: Store) -> None:
    with FakeSlack() as api:
        notifier = slack(store, api)
        release = a_release(store)
        tell(store, notifier, release, "breach", "us#1 heartbeat breach: messages down 60%",
             level="page")
        tell(store, notifier, release, "stall", "pipeline us stalled", level="page")
        tell(store, notifier, release, "halted", "us#1 halted by gate: smoke", level="warning")
        assert notifier.flush(10)
        loud = [p for p in api.calls("chat.postMessage") if "<!here>" in p["text"]]
    assert len(loud) == 2 and all("thread_ts" not in p for p in loud)
    assert "messages down 60%" in loud[0]["text"] and "<@U_ANN> bob" in loud[0]["text"]
    assert "pipeline us stalled" in loud[1]["text"]


def test_rate_limits_are_waited_out_as_slack_asks(store: Store) -> None:
    waits = Waits()
    with FakeSlack() as api:
        api.route("POST", "/api/chat.postMessage", [
            Reply(status=429, json={"ok": False, "error": "ratelimited"},
                  headers={"Retry-After": "3"}),
            Reply(json={"ok": True, "channel": CHANNEL_ID, "ts": "1.000001"})])
        notifier = slack(store, api, waits)
        release = a_release(store)
        tell(store, notifier, release, "stage", "us#1 building")
        assert notifier.flush(10)
        assert len(api.calls("chat.postMessage")) == 2
    assert waits == [3.0]
    assert store.notice_ref(release.id, "slack").ref == "1.000001"
    assert events(store, "notify_failed") == []


def test_slack_errors_are_retried_then_recorded_and_never_show_the_token(
        store: Store) -> None:
    waits = Waits()
    with FakeSlack() as api:
        api.route("POST", "/api/chat.postMessage", Reply(status=503, body="upstream down"))
        notifier = slack(store, api, waits, attempts=3)
        release = a_release(store)
        tell(store, notifier, release, "stage", "us#1 building")  # returns at once
        assert notifier.flush(10)
        assert len(api.calls("chat.postMessage")) == 3
    assert waits == [0.5, 1.0]  # backoff doubles
    [failure] = events(store, "notify_failed")
    assert "slack could not send the release message (stage)" in failure
    assert "gave up after 3 attempt(s): HTTP 503" in failure
    assert all(SLACK_TOKEN not in e.message for e in store.events("us"))


def test_a_refusal_is_not_retried_and_a_long_retry_after_gives_up(store: Store) -> None:
    waits = Waits()
    with FakeSlack() as api:
        api.route("POST", "/api/chat.postMessage", [
            Reply(json={"ok": False, "error": "channel_not_found"}),
            Reply(status=429, json={"ok": False}, headers={"Retry-After": "900"})])
        notifier = slack(store, api, waits, give_up_after=60)
        release = a_release(store)
        tell(store, notifier, release, "stage", "us#1 building")
        tell(store, notifier, release, "stage", "us#1 preprod")
        assert notifier.flush(10)
        assert len(api.calls("chat.postMessage")) == 2
    assert waits == []  # waiting 900 s would not fit the 60 s budget: given up at once
    refused, rate_limited = events(store, "notify_failed")
    assert "Slack refused: channel_not_found" in refused
    assert "HTTP 429 (rate limited)" in rate_limited


def test_without_a_token_nothing_is_sent_and_that_is_recorded(store: Store) -> None:
    with FakeSlack() as api:
        notifier = slack(store, api, env={})
        tell(store, notifier, a_release(store), "stage", "us#1 building")
        assert notifier.flush(10)
        assert api.requests == []
    assert "SLACK_BOT_TOKEN is not set" in events(store, "notify_failed")[0]


def test_github_deployment_statuses_follow_the_release(store: Store) -> None:
    with FakeServer() as github:
        github.route("POST", "/repos/example/chat/deployments", Reply(201, json={"id": 42}))
        github.route("POST", "/repos/example/chat/deployments/42/statuses",
                     Reply(201, json={"id": 1}))
        pipeline = config.parse(SIM_PIPELINES).pipeline("us")
        cfg = config.GitHubDeployments(api_url=github.url,
                                       environment_url="https://{region}.chat.example.com")
        notifier = GitHubDeploymentNotifier(
            cfg, pipeline, ProviderContext("us", "us-east-1", env={"GITHUB_TOKEN": GITHUB_TOKEN}),
            store, outbox=Outbox("github", store, cfg, wait=Waits()))
        release = a_release(store)
        store.move(release.id, State.BUILDING)
        tell(store, notifier, release, "stage", "us#1 building")
        store.move(release.id, State.PREPROD)
        tell(store, notifier, release, "stage", "us#1 preprod")  # not a status change
        tell(store, notifier, release, "live", "us#1 is live on every host")
        assert notifier.flush(10)
        [created] = [r.json() for r in github.requests_to("/repos/example/chat/deployments")]
        statuses = [r.json() for r in github.requests_to(".*/statuses")]
        assert all(r.headers["authorization"] == f"Bearer {GITHUB_TOKEN}"
                   and r.headers["x-github-api-version"] == "2022-11-28"
                   for r in github.requests)
    assert created["ref"] == release.sha and created["environment"] == "production-us-east-1"
    assert created["payload"] == {"pipeline": "us", "release": 1}
    assert [s["state"] for s in statuses] == ["in_progress", "success"]
    assert statuses[1]["log_url"] == LOGS.url
    assert statuses[1]["environment_url"] == "https://us-east-1.chat.example.com"


def test_pipelines_yaml_chooses_the_notifiers(tmp_path: Path) -> None:
    data = yaml.safe_load(SIM_PIPELINES)
    notify = data["pipelines"]["us"]["notify"] = {
        "console": True, "slack": {"channel": "#deploys", "allow": ["U1"]},
        "pagerduty": {"routing_key_env": "PD_KEY"}, "github": {"environment": "prod-{region}"}}
    loaded = config.parse(yaml.safe_dump(data))
    notify["slack"]["chanel"] = "#typo"
    with pytest.raises(config.ConfigError, match=r"notify\.slack\.chanel: unknown field"):
        config.parse(yaml.safe_dump(data))
    ship = Ship(loaded, Store(f"sqlite:///{tmp_path}/ship.db"), env={})
    notifiers = ship.pipeline("us").broadcast.notifiers
    assert [type(n) for n in notifiers] == [ConsoleNotifier, SlackNotifier, Queued,
                                            GitHubDeploymentNotifier]
    assert notifiers[2].name == "pagerduty"
    assert ship.close_notifiers(5)
