"""The operator API of `ship serve`, for the CLI on this machine (orchestrator.handle).

    POST /api/rollback   {"pipeline", "actor", "reason", "to"?: int, "minutes_ago"?: number}
                         200 rolled back · 409 refused · 400 bad input · 404 unknown pipeline
                         401 without the token of the server's handle

The rollback runs as a task of its own on the server's loop: a client that stops waiting
never stops a rollback half-way, and a draining server waits for it.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Mapping
from typing import Any

from orchestrator.config import UnknownPipeline
from orchestrator.runner import Runner
from orchestrator.runtime import Ship
from orchestrator.untrusted import BadInput, load_json, typed
from orchestrator.untrusted import release_number as checked_number

BODY_LIMIT = 16_384  # bytes: a few short fields
TEXT_LIMIT = 1_000  # characters of a reason or an actor


class OperatorApi:
    """The handler of POST /api/rollback, served like the webhooks (server.answer): refused
    unread without the token, its body read within BODY_LIMIT, then acted on."""

    def __init__(self, ship: Ship, runner: Runner, token: str) -> None:
        self.ship = ship
        self.runner = runner
        self.token = token

    def refuse_unread(self, headers: Mapping[str, str]) -> tuple[int, dict] | None:
        if not _authorized(headers, self.token):
            return 401, {"error": "a valid bearer token is required"}
        return None

    async def handle(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict]:
        refusal = self.refuse_unread(headers)
        if refusal is not None:
            return refusal
        try:
            asked = _rollback_request(load_json(body))
            name = self.ship.config.pipeline(asked.pop("pipeline")).name
        except BadInput as error:
            return 400, {"error": str(error)}
        except UnknownPipeline as error:
            return 404, {"error": str(error)}
        outcome = await self.runner.start_rollback(name, **asked)
        status = 200 if outcome.won else 400 if outcome.bad_input else 409
        return status, {"won": outcome.won, "reason": outcome.reason, "target": outcome.target,
                        "rollback_id": outcome.rollback_id, "bad_input": outcome.bad_input}


def _authorized(headers: Mapping[str, str], token: str) -> bool:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode())


def _rollback_request(body: Any) -> dict[str, Any]:
    typed(body, dict, "body")
    asked = {"pipeline": _text(body, "pipeline"), "actor": _text(body, "actor"),
             "reason": _text(body, "reason"), "to_number": None, "minutes_ago": None}
    to, minutes = body.get("to"), body.get("minutes_ago")
    if to is not None and minutes is not None:
        raise BadInput("give `to` or `minutes_ago`, not both")
    if to is not None:
        if not isinstance(to, int):  # a JSON number, not digits in a string
            raise BadInput("to: expected a release number")
        try:
            asked["to_number"] = checked_number(to, "to")
        except ValueError as error:
            raise BadInput(str(error)) from None
    if minutes is not None:
        if type(minutes) not in (int, float) or not math.isfinite(minutes) or minutes < 0:
            raise BadInput("minutes_ago: expected a finite number of minutes, 0 or more")
        asked["minutes_ago"] = float(minutes)
    return asked


def _text(body: dict[str, Any], field: str) -> str:
    value = typed(body.get(field), str, field)
    if not value.strip() or len(value) > TEXT_LIMIT:
        raise BadInput(f"{field}: expected text of 1 to {TEXT_LIMIT} characters")
    return value
