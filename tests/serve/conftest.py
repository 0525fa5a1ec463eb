"""`ship serve` as a real process on a free port, a fake Slack API for it to talk to, and
builders for signed GitHub and Slack requests."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import yaml

from orchestrator.store import Store
from tests.conftest import ROOT, SIM_PIPELINES
from tests.fakehttp import FakeServer, Reply, Request

GITHUB_SECRET = "webhook-secret-for-tests"
SLACK_SECRET = "slack-signing-secret-for-tests"
SLACK_TOKEN = "xoxb-test-token-0123456789"
CHANNEL_ID = "C0DEPLOYS"
SPEED = 60.0  # a real second is a pipeline minute


def wait_for(check: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    """Poll until `check()` is truthy; its value. A bounded wait, not a timing assert."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def config_text(slack_url: str | None = None, watch: str = "30m",
                pipelines: tuple[str, ...] = ("us", "eu")) -> str:
    """The suite's simulated pipelines, with Slack pointed at a fake API. A long watch also
    gives a held promotion long to wait (the train test holds release 1 by hand)."""
    data = yaml.safe_load(SIM_PIPELINES)
    defaults = data["x-defaults"]
    defaults["heartbeat"]["watch"] = watch
    if slack_url:
        defaults["notify"]["slack"] = {
            "channel": "#deploys", "api_url": f"{slack_url}/api/",
            "users": {"ann": "U_ANN", "alice": "U_ALICE"}, "allow": ["U_ALICE", "U_BOB"],
            "backoff": 0.05, "attempts": 3}
    data["pipelines"] = {name: {**defaults, "region": f"{name}-1"} for name in pipelines}
    del data["x-defaults"]
    return yaml.safe_dump(data)


class Serving:
    """A `ship serve` subprocess: its URL, its store, and signed requests to it."""

    def __init__(self, tmp_path: Path, prefect_api: str, config: str,
                 *args: str) -> None:
        self.dir = tmp_path
        (tmp_path / "pipelines.yaml").write_text(config)
        self.db_url = f"sqlite:///{tmp_path}/ship.db"
        self.log_path = tmp_path / "serve.log"
        env = {**os.environ, "PREFECT_API_URL": prefect_api, "SHIP_DATABASE_URL": self.db_url,
               "GITHUB_WEBHOOK_SECRET": GITHUB_SECRET, "SLACK_SIGNING_SECRET": SLACK_SECRET,
               "SLACK_BOT_TOKEN": SLACK_TOKEN, "PYTHONPATH": str(ROOT)}
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "--config", "pipelines.yaml",
             "--speed", str(SPEED), "serve", "--port", "0", *args],
            cwd=tmp_path, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.url = wait_for(self._listening, "ship serve to listen", timeout=120)
        self.store = Store(self.db_url)
        self._deliveries = itertools.count(1)

    def _listening(self) -> str | None:
        if self.process.poll() is not None:
            raise AssertionError(f"ship serve exited {self.process.returncode}:\n{self.log()}")
        for line in self.log().splitlines():
            if "listening on " in line:
                return line.split("listening on ", 1)[1].split()[0]
        return None

    def log(self) -> str:
        return self.log_path.read_text()

    def github(self, payload: Any, event: str = "push", delivery: str | None = None,
               secret: str | None = GITHUB_SECRET, body: bytes | None = None,
               signature: str | None = None) -> requests.Response:
        body = json.dumps(payload).encode() if body is None else body
        headers = {"X-GitHub-Event": event, "Content-Type": "application/json",
                   "X-GitHub-Delivery": delivery or f"delivery-{next(self._deliveries)}"}
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        elif secret is not None:
            headers["X-Hub-Signature-256"] = github_signature(secret, body)
        return requests.post(f"{self.url}/webhooks/github", data=body, headers=headers,
                             timeout=10)

    def slack(self, body: bytes, headers: dict[str, str] | None = None,
              when: int | None = None) -> requests.Response:
        headers = slack_headers(body, when) if headers is None else headers
        return requests.post(f"{self.url}/slack/interactions", data=body, timeout=10,
                             headers={"Content-Type": "application/x-www-form-urlencoded",
                                      **headers})

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()
            self.store.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


@pytest.fixture
def serve(tmp_path: Path, prefect_api: str) -> Iterator[Callable[..., Serving]]:
    started: list[Serving] = []

    def start(config: str, *args: str) -> Serving:
        serving = Serving(tmp_path, prefect_api, config, *args)
        started.append(serving)
        return serving

    yield start
    for serving in started:
        serving.kill()


# --- GitHub -------------------------------------------------------------------------------


def github_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def sha(n: int, salt: str = "") -> str:
    return hashlib.sha1(f"{salt}commit-{n}".encode()).hexdigest()


def push(shas: list[str], author: str = "ann", repo: str = "example/chat",
         ref: str = "refs/heads/main") -> dict[str, Any]:
    commits = [{"id": s, "tree_id": "f" * 40, "distinct": True, "message": f"change {s[:7]}",
                "timestamp": "2026-11-30T12:00:00Z", "url": f"https://github.com/{repo}/commit/{s}",
                "author": {"name": author.title(), "email": f"{author}@example.com",
                           "username": author},
                "committer": {"name": "GitHub", "email": "noreply@github.com",
                              "username": "web-flow"},
                "added": [], "removed": [], "modified": ["app.py"]} for s in shas]
    return {"ref": ref, "before": "0" * 40, "after": shas[-1] if shas else "0" * 40,
            "created": False, "deleted": False, "forced": False,
            "repository": {"id": 1, "name": repo.split("/")[1], "full_name": repo,
                           "owner": {"login": repo.split("/")[0]}},
            "pusher": {"name": author, "email": f"{author}@example.com"},
            "sender": {"login": author}, "commits": commits,
            "head_commit": commits[-1] if commits else None}


# --- Slack ----------------------------------------------------------------------------------


def slack_headers(body: bytes, when: int | None = None,
                  secret: str = SLACK_SECRET) -> dict[str, str]:
    timestamp = str(int(time.time()) if when is None else when)
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body,
                      hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": f"v0={digest}"}


def press(action_id: str, pipeline: str, release: int, user: str = "U_ALICE",
          name: str = "alice", response_url: str | None = None) -> bytes:
    """A block_actions interaction as Slack sends it: form-encoded, a JSON `payload`."""
    payload = {
        "type": "block_actions", "team": {"id": "T0TEAM", "domain": "example"},
        "user": {"id": user, "username": name, "name": name, "team_id": "T0TEAM"},
        "api_app_id": "A0SHIP", "token": "legacy-verification-token",
        "container": {"type": "message", "message_ts": "1700000000.000100",
                      "channel_id": CHANNEL_ID, "is_ephemeral": False},
        "trigger_id": "123.456.abc", "channel": {"id": CHANNEL_ID, "name": "deploys"},
        "actions": [{"action_id": action_id, "block_id": f"ship_{release}", "type": "button",
                     "value": json.dumps({"pipeline": pipeline, "release": release}),
                     "text": {"type": "plain_text", "text": action_id},
                     "action_ts": f"{time.time():.6f}"}],
    }
    if response_url:  # Slack's own is on hooks.slack.com: tests give a local one, or none
        payload["response_url"] = response_url
    return urlencode({"payload": json.dumps(payload)}).encode()


class FakeSlack(FakeServer):
    """Slack's Web API as far as ship uses it: chat.postMessage gives each message a new
    ts; chat.update answers ok; response URLs (under /hooks/) answer ok."""

    def __init__(self) -> None:
        super().__init__()
        self._ts = itertools.count(1)
        self.route("POST", "/api/chat.postMessage", self._post)
        self.route("POST", "/api/chat.update", Reply(json={"ok": True, "channel": CHANNEL_ID}))
        self.route("POST", "/hooks/.*", Reply(body="ok"))

    def _post(self, request: Request) -> Reply:
        return Reply(json={"ok": True, "channel": CHANNEL_ID,
                           "ts": f"1700000000.{next(self._ts):06d}"})

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [r.json() for r in self.requests_to(f"/api/{method}")]


@pytest.fixture
def slack_api() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        yield server
