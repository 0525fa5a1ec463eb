"""Merges in from GitHub: `push` webhooks to a pipeline's branch queue their commits for
the pipeline's next release (a release train).

Every request is verified against GITHUB_WEBHOOK_SECRET (X-Hub-Signature-256, HMAC-SHA256
of the raw body) before its body is parsed. A push is matched to pipelines by repository
and branch; several regions may share a repository, and each gets every commit. Nothing
merged is lost or shipped twice: a commit is recorded once per pipeline (the store's
unique key), and a delivery seen before (X-GitHub-Delivery, kept with the merges) is
acknowledged and changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.config import ShipConfig
from orchestrator.runner import Runner
from orchestrator.runtime import Ship
from shiptypes import Commit

SECRET_ENV = "GITHUB_WEBHOOK_SECRET"
MAX_MESSAGE = 2000


class BadPayload(ValueError):
    pass


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """Whether X-Hub-Signature-256 signs `body` with `secret` (constant-time compare)."""
    if not secret or not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(signature(secret, body), header.strip())


@dataclass(frozen=True)
class Push:
    repository: str  # owner/name
    ref: str
    commits: tuple[Commit, ...]
    deleted: bool = False


def parse_push(body: bytes) -> Push:
    """The push event's repository, ref and commits (oldest first, as GitHub sends them)."""
    try:
        payload = json.loads(body)
        repository = payload["repository"]["full_name"]
        ref = payload["ref"]
        commits = tuple(_commit(c) for c in payload.get("commits") or [])
    except (ValueError, KeyError, TypeError) as error:
        raise BadPayload(f"not a push event payload ({type(error).__name__}: {error})") from None
    if not isinstance(repository, str) or not isinstance(ref, str):
        raise BadPayload("not a push event payload (repository or ref is not a string)")
    return Push(repository, ref, commits, bool(payload.get("deleted")))


def _commit(data: dict[str, Any]) -> Commit:
    sha = data["id"]
    if not isinstance(sha, str) or not 7 <= len(sha) <= 64:
        raise ValueError(f"commit id {sha!r}")
    author = data.get("author") or {}
    login = author.get("username") or author.get("name") or ""
    # merged_at is left to the store (the time of receipt): a release train follows the
    # order merges arrived in, whatever dates the commits carry.
    return Commit(sha.lower(), str(login)[:200], str(data.get("message") or "")[:MAX_MESSAGE])


def pipelines_for(config: ShipConfig, push: Push) -> list[str]:
    return [name for name, pipeline in config.pipelines.items()
            if pipeline.repo.name.lower() == push.repository.lower()
            and push.ref == f"refs/heads/{pipeline.repo.branch}"]


class GitHubIntake:
    """The handler of POST /webhooks/github: (HTTP status, answer)."""

    def __init__(self, ship: Ship, runner: Runner, secret: str) -> None:
        self.ship = ship
        self.runner = runner
        self.secret = secret

    async def handle(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict]:
        if not self.secret:
            return 503, {"error": f"{SECRET_ENV} is not set: webhooks cannot be verified"}
        if not verify(self.secret, body, headers.get("x-hub-signature-256")):
            return 401, {"error": "bad or missing X-Hub-Signature-256"}
        event = headers.get("x-github-event", "")
        if event == "ping":
            return 200, {"ok": True, "pong": True}
        if event != "push":
            return 202, {"ok": True, "ignored": f"{event or 'unnamed'} event"}
        delivery = headers.get("x-github-delivery") or None
        try:
            push = parse_push(body)
        except BadPayload as error:
            return 400, {"error": str(error)}
        names = pipelines_for(self.ship.config, push)
        if push.deleted or not names:
            return 202, {"ok": True, "ignored": f"no pipeline ships {push.repository} "
                         f"{push.ref}" if not names else "branch deleted"}
        queued = {name: await asyncio.to_thread(self._record, name, push, delivery)
                  for name in names}
        for name, counts in queued.items():
            if counts["queued"]:
                self.runner.kick(name, actor="github")
        return 200, {"ok": True, "delivery": delivery, "pipelines": queued}

    def _record(self, pipeline: str, push: Push, delivery: str | None) -> dict[str, int]:
        store = self.ship.store
        if delivery and store.delivery_seen(pipeline, delivery):
            return {"queued": 0, "duplicate": len(push.commits)}
        queued = sum(store.record_merge(pipeline, commit, delivery) for commit in push.commits)
        return {"queued": queued, "duplicate": len(push.commits) - queued}
