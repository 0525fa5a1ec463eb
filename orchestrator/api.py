"""The operator API of `ship serve`, for the CLI on this machine (orchestrator.handle).

    POST /api/rollback   {"pipeline", "actor", "reason", "to"?: int, "minutes_ago"?: number}
                         200 rolled back · 409 refused · 400 bad input · 404 unknown pipeline
                         401 without the token of the server's handle

The rollback runs as a task of its own on the server's loop: a client that stops waiting
never stops a rollback half-way, and a draining server waits for it.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from orchestrator.config import UnknownPipeline
from orchestrator.runner import Runner
from orchestrator.runtime import Ship

BODY_LIMIT = 16_384  # bytes: a few short fields
TEXT_LIMIT = 1_000  # characters of a reason or an actor
NUMBER_LIMIT = 2**63 - 1  # the store's integers


class BadRequest(Exception):
    pass


def mount_api(app: FastAPI, ship: Ship, runner: Runner, token: str) -> None:
    @app.post("/api/rollback")
    async def rollback(request: Request) -> JSONResponse:
        if not _authorized(request.headers, token):
            return JSONResponse({"error": "a valid bearer token is required"}, status_code=401)
        if app.state.stopping:
            return JSONResponse({"error": "ship serve is stopping"}, status_code=503)
        try:
            asked = _rollback_request(await _bounded_json(request))
            name = ship.config.pipeline(asked.pop("pipeline")).name
        except BadRequest as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        except UnknownPipeline as error:
            return JSONResponse({"error": str(error)}, status_code=404)
        outcome = await runner.start_rollback(name, **asked)
        status = 200 if outcome.won else 400 if outcome.bad_input else 409
        return JSONResponse({"won": outcome.won, "reason": outcome.reason,
                             "target": outcome.target, "rollback_id": outcome.rollback_id,
                             "bad_input": outcome.bad_input}, status_code=status)


def _authorized(headers: Mapping[str, str], token: str) -> bool:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode())


async def _bounded_json(request: Request) -> Any:
    """The body as JSON, read no further than BODY_LIMIT bytes."""
    if int(request.headers.get("content-length") or 0) > BODY_LIMIT:
        raise BadRequest(f"body over {BODY_LIMIT} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > BODY_LIMIT:
            raise BadRequest(f"body over {BODY_LIMIT} bytes")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("the body is not JSON") from None


def _rollback_request(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    asked = {"pipeline": _text(body, "pipeline"), "actor": _text(body, "actor"),
             "reason": _text(body, "reason"), "to_number": None, "minutes_ago": None}
    to, minutes = body.get("to"), body.get("minutes_ago")
    if to is not None and minutes is not None:
        raise BadRequest("give `to` or `minutes_ago`, not both")
    if to is not None:
        if type(to) is not int or not 1 <= to <= NUMBER_LIMIT:
            raise BadRequest("to: expected a release number")
        asked["to_number"] = to
    if minutes is not None:
        if type(minutes) not in (int, float) or not math.isfinite(minutes) or minutes < 0:
            raise BadRequest("minutes_ago: expected a finite number of minutes, 0 or more")
        asked["minutes_ago"] = float(minutes)
    return asked


def _text(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip() or len(value) > TEXT_LIMIT:
        raise BadRequest(f"{field}: expected text of 1 to {TEXT_LIMIT} characters")
    return value
