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
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.config import ShipConfig
from orchestrator.runner import Runner
from orchestrator.runtime import Ship
from orchestrator.untrusted import BadInput, load_json, typed
from shiptypes import Commit

SECRET_ENV = "GITHUB_WEBHOOK_SECRET"
MAX_MESSAGE = 2000
MAX_COMMITS = 2048  # GitHub lists at most 2048 commits in a push event
MAX_DELIVERY = 100  # the store's delivery_id column
SIGNATURE = re.compile(r"sha256=[0-9a-fA-F]{64}")
SHA = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")  # SHA-1, or SHA-256 repositories


BadPayload = BadInput  # a push that is refused: the message names the field


class TooManyCommits(BadInput):
    status = 413


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
    """The push event's repository, ref and commits (oldest first, as GitHub sends them).
    BadPayload names the first field that is missing or of the wrong type."""
    payload = typed(load_json(body), dict, "body")
    repository = typed(payload.get("repository"), dict, "repository")
    full_name = typed(repository.get("full_name"), str, "repository.full_name")
    ref = typed(payload.get("ref"), str, "ref")
    deleted = typed(payload.get("deleted", False), bool, "deleted", optional=True)
    commits = typed(payload.get("commits"), list, "commits", optional=True) or []
    if len(commits) > MAX_COMMITS:
        raise TooManyCommits(f"commits: {len(commits):,} in one push; a push event carries "
                             f"at most {MAX_COMMITS:,} (GitHub's own cap)")
    return Push(full_name, ref, tuple(_commit(c, f"commits[{i}]")
                                      for i, c in enumerate(commits)), bool(deleted))


def _commit(data: Any, where: str) -> Commit:
    data = typed(data, dict, where)
    sha = typed(data.get("id"), str, f"{where}.id")
    if not SHA.fullmatch(sha):
        raise BadPayload(f"{where}.id: {sha[:80]!r} is not a commit id (40 or 64 hex digits)")
    author = typed(data.get("author"), dict, f"{where}.author", optional=True) or {}
    login = (typed(author.get("username"), str, f"{where}.author.username", optional=True)
             or typed(author.get("name"), str, f"{where}.author.name", optional=True) or "")
    message = typed(data.get("message"), str, f"{where}.message", optional=True) or ""
    stamp = typed(data.get("timestamp"), str, f"{where}.timestamp", optional=True)
    if stamp is not None:
        try:
            datetime.fromisoformat(stamp)
        except ValueError:
            raise BadPayload(f"{where}.timestamp: {stamp[:80]!r} is not an ISO 8601 time") \
                from None
    # merged_at is left to the store (the time of receipt): a release train follows the
    # order merges arrived in, whatever dates the commits carry.
    return Commit(sha.lower(), login[:200], message[:MAX_MESSAGE])


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

    def refuse_unread(self, headers: Mapping[str, str]) -> tuple[int, dict] | None:
        """What is refused before a byte of the body is read: no secret to verify with,
        or no well-formed X-Hub-Signature-256."""
        if not self.secret:
            return 503, {"error": f"{SECRET_ENV} is not set: webhooks cannot be verified"}
        if not SIGNATURE.fullmatch(headers.get("x-hub-signature-256", "").strip()):
            return 401, {"error": "bad or missing X-Hub-Signature-256"}
        return None

    async def handle(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict]:
        refusal = self.refuse_unread(headers)
        if refusal is not None:
            return refusal
        # Hashing and parsing up to 25 MB happen off the event loop: /healthz keeps answering.
        if not await asyncio.to_thread(verify, self.secret, body,
                                       headers.get("x-hub-signature-256")):
            return 401, {"error": "bad or missing X-Hub-Signature-256"}
        event = headers.get("x-github-event", "")
        if event == "ping":
            return 200, {"ok": True, "pong": True}
        if event != "push":
            return 202, {"ok": True, "ignored": f"{event[:100] or 'unnamed'} event"}
        delivery = headers.get("x-github-delivery") or None
        if delivery is not None and len(delivery) > MAX_DELIVERY:
            return 400, {"error": f"X-GitHub-Delivery: longer than {MAX_DELIVERY} characters"}
        try:
            push = await asyncio.to_thread(parse_push, body)
        except BadPayload as error:
            return error.status, {"error": str(error)}
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
        queued = self.ship.store.record_merges(pipeline, push.commits, delivery)
        return {"queued": queued, "duplicate": len(push.commits) - queued}
