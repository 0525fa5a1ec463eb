"""The buttons on a release's Slack message: Roll back, Lock, Unlock.

A request is acted on only when its signature and timestamp verify against
SLACK_SIGNING_SECRET (replays older than 5 minutes are refused, and an identical request
seen within those 5 minutes is refused too), the pipeline exists, and the Slack user is
on that pipeline's allowlist (notify.slack.allow). Acting is idempotent: a double click
rolls back once and locks once, because the store's compare-and-set decides and the second
click is told what the first did. Each press is recorded in the event log with its actor.

Roll back on release N rolls the pipeline back from N (if N is still what is live) to the
release that served before it; like any manual rollback it locks the pipeline.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from slack_sdk.signature import Clock, SignatureVerifier

from orchestrator.config import SlackNotify
from orchestrator.notify.slack import LOCK, ROLLBACK, UNLOCK, SlackNotifier
from orchestrator.release import SHIPPED
from orchestrator.rollback import NoRollbackTarget, choose_target
from orchestrator.runner import Runner
from orchestrator.runtime import PipelineRuntime, Ship
from orchestrator.store import Release
from orchestrator.untrusted import BadInput, load_json, release_number, typed

SECRET_ENV = "SLACK_SIGNING_SECRET"
REPLAY_WINDOW = 300.0  # seconds: Slack's own bound, which SignatureVerifier enforces
ACTIONS = {ROLLBACK: "rollback", LOCK: "lock", UNLOCK: "unlock"}
SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")


BadPayload = BadInput  # a press that is refused: the message names the field


@dataclass(frozen=True)
class Press:
    """One button press, from a block_actions payload."""

    action: str  # rollback | lock | unlock
    pipeline: str
    release: int
    user_id: str
    user_name: str
    response_url: str | None


def parse(body: bytes) -> Press:
    """The press in an interaction request (form-encoded, a JSON `payload` field).
    BadPayload names the field that is missing or wrong."""
    try:
        form = parse_qs(body.decode(), strict_parsing=True, max_num_fields=32)
    except ValueError as error:
        raise BadPayload(f"body: not a form ({error})") from None
    if "payload" not in form:
        raise BadPayload("payload: missing")
    payload = typed(load_json(form["payload"][0], "payload"), dict, "payload")
    if payload.get("type") != "block_actions":
        raise BadPayload(f"interaction type {str(payload.get('type'))[:40]!r} is not handled")
    actions = typed(payload.get("actions"), list, "actions")
    action = typed(actions[0] if actions else None, dict, "actions[0]")
    kind = ACTIONS.get(action.get("action_id"))  # type: ignore[arg-type]
    if kind is None:
        raise BadPayload(f"actions[0].action_id: {str(action.get('action_id'))[:40]!r} "
                         "is not a ship button")
    value = typed(load_json(typed(action.get("value"), str, "actions[0].value"),
                            "actions[0].value"), dict, "actions[0].value")
    try:
        number = release_number(value.get("release"), "actions[0].value.release")
    except ValueError as error:
        raise BadPayload(str(error)) from None
    user = typed(payload.get("user"), dict, "user")
    user_id = typed(user.get("id"), str, "user.id")
    name = (typed(user.get("username"), str, "user.username", optional=True)
            or typed(user.get("name"), str, "user.name", optional=True) or user_id)
    return Press(kind, typed(value.get("pipeline"), str, "actions[0].value.pipeline")[:64],
                 number, user_id[:64], name[:100],
                 typed(payload.get("response_url"), str, "response_url", optional=True))


class SlackActions:
    """The handler of POST /slack/interactions: (HTTP status, answer)."""

    def __init__(self, ship: Ship, runner: Runner, signing_secret: str,
                 clock: Clock | None = None) -> None:
        self.ship = ship
        self.runner = runner
        self.verifier = (SignatureVerifier(signing_secret, clock or Clock())
                         if signing_secret.strip() else None)
        self._seen: dict[str, float] = {}
        self._rollbacks: dict[str, asyncio.Task] = {}

    def verify(self, body: bytes, headers: Mapping[str, str]) -> bool:
        if self.verifier is None:
            return False
        timestamp = headers.get("x-slack-request-timestamp")
        try:
            return self.verifier.is_valid(body, timestamp, headers.get("x-slack-signature"))
        except (ValueError, TypeError):  # a timestamp that is not a number
            return False

    def refuse_unread(self, headers: Mapping[str, str]) -> tuple[int, dict] | None:
        """What is refused before a byte of the body is read: no secret to verify with, no
        well-formed signature, or a timestamp outside the replay window."""
        if self.verifier is None:
            return 503, {"error": f"{SECRET_ENV} is not set: Slack requests cannot be verified"}
        stamp = headers.get("x-slack-request-timestamp", "").strip()
        if (not SIGNATURE.fullmatch(headers.get("x-slack-signature", "").strip())
                or not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12
                or abs(self.verifier.clock.now() - int(stamp)) > REPLAY_WINDOW):
            return 401, {"error": "bad, stale or missing Slack signature"}
        return None

    async def handle(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict]:
        refusal = self.refuse_unread(headers)
        if refusal is not None:
            return refusal
        if not self.verify(body, headers):
            return 401, {"error": "bad, stale or missing Slack signature"}
        if self._replayed(headers.get("x-slack-signature", "")):
            return 401, {"error": "replayed request: this exact request was handled already"}
        try:
            press = parse(body)
        except BadPayload as error:
            return 400, {"error": str(error)}
        if press.pipeline not in self.ship.config.pipelines:
            return 404, {"error": f"unknown pipeline {press.pipeline!r}"}
        rt = self.ship.pipeline(press.pipeline)
        slack = rt.config.notify.slack
        if slack is None or press.user_id not in slack.allow:
            rt.store.event(press.pipeline, "slack_refused", f"Slack user {press.user_name} "
                           f"({press.user_id}) may not {press.action} {press.pipeline}",
                           actor=actor(press, slack), data=_data(press))
            return 403, {"error": f"you may not {press.action} {press.pipeline}"}
        release = rt.store.release_by_number(press.pipeline, press.release)
        if release is None:
            return 404, {"error": f"{press.pipeline} has no release #{press.release}"}
        who = actor(press, slack)
        rt.store.event(press.pipeline, "slack_action", f"{who} pressed {press.action} on "
                       f"{release.name} in Slack", actor=who, release_id=release.id,
                       data=_data(press))
        act = {"rollback": self._rollback, "lock": self._lock, "unlock": self._unlock}
        done, text = await act[press.action](rt, release, who)
        responder = _responder(rt)
        if not done and press.response_url and responder is not None:
            responder.respond(press.pipeline, press.response_url, text)
        return 200, {"ok": done, "text": text}

    def _replayed(self, signature: str) -> bool:
        now = time.monotonic()
        self._seen = {s: at for s, at in self._seen.items() if now - at < REPLAY_WINDOW}
        if signature in self._seen:
            return True
        self._seen[signature] = now
        return False

    async def _lock(self, rt: PipelineRuntime, release: Release, who: str) -> tuple[bool, str]:
        claim = rt.store.take_lock(rt.name, who, f"locked from Slack by {who}")
        if not claim.won:
            return False, f"{rt.name} is already {claim.reason}"
        rt.notify("lock", f"🔒 {rt.name} locked by {who}", release, actor=who)
        return True, f"{rt.name} locked"

    async def _unlock(self, rt: PipelineRuntime, release: Release, who: str) -> tuple[bool, str]:
        lock = rt.store.unlock(rt.name, who, f"unlocked from Slack by {who}")
        if lock is None:
            return False, f"{rt.name} is not locked"
        rt.notify("unlock", f"🔓 {rt.name} unlocked by {who}", release, actor=who)
        self.runner.kick(rt.name, actor=who)  # merges queued while locked may ship now
        return True, f"{rt.name} unlocked"

    async def _rollback(self, rt: PipelineRuntime, release: Release,
                        who: str) -> tuple[bool, str]:
        state = rt.store.pipeline_state(rt.name)
        if state.live is None or state.live.id != release.id:
            serving = state.live.name if state.live else "nothing"
            return False, f"{release.name} is not live ({serving} is): nothing to roll back"
        running = self._rollbacks.get(rt.name)
        if (running and not running.done()) or state.rollback is not None:
            return False, f"a rollback of {rt.name} is already running"
        try:
            entry = choose_target(rt.store.live_history(rt.name), release.id, rt.clock.now())
        except NoRollbackTarget as refusal:
            return False, f"cannot roll back {release.name}: {refusal}"
        target = rt.store.release(entry.release_id)
        if target.state not in SHIPPED:
            return False, f"cannot roll back {release.name}: {target.name} is {target.state}"
        # Slack wants an answer within 3 s; the rollback reports through the message.
        self._rollbacks[rt.name] = asyncio.create_task(self.runner.rollback(
            rt.name, who, f"rolled back from Slack by {who}", to_number=target.number))
        return True, f"rolling back {release.name} → {target.name}"

    async def settle(self) -> None:
        """Wait for the rollbacks started from Slack (at shutdown)."""
        await asyncio.gather(*self._rollbacks.values(), return_exceptions=True)


def actor(press: Press, slack: SlackNotify | None) -> str:
    """Who pressed: their GitHub login when the user map knows them, else their Slack name."""
    logins = {user: login for login, user in (slack.users if slack else {}).items()}
    return logins.get(press.user_id) or f"{press.user_name} (Slack)"


def _data(press: Press) -> dict[str, Any]:
    return {"slack_user": press.user_id, "slack_name": press.user_name,
            "action": press.action, "release": press.release}


def _responder(rt: PipelineRuntime) -> SlackNotifier | None:
    return next((n for n in rt.broadcast.notifiers if isinstance(n, SlackNotifier)), None)
