"""What comes from outside `ship serve` before anything trusts it: request bodies read as a
bounded stream, JSON that may be nested to exhaust the parser, and numbers that may not fit
the store.

A body is refused (413) as soon as it passes its endpoint's limit, whether it declared a
Content-Length or came chunked; only `at_once` unverified bodies are read at a time per
endpoint (a further request waits up to `wait` seconds for a place, then gets 503), and a
body must arrive within `deadline` seconds (else 408). So what one endpoint holds in
unverified bodies is at most `at_once × limit`, however many clients send at once.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.requests import ClientDisconnect, Request

from orchestrator.store import ID_MAX, in_range

# Refusals that leave a body unread close the connection, so the client stops sending it.
CLOSE = {"connection": "close"}
_DIGITS = re.compile(r"[0-9]{1,19}")


class BodyRefused(Exception):
    """A request body not read: `status` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BodyReader:
    """Reads one endpoint's request bodies within its limits (see the module's doc)."""

    def __init__(self, limit: int, at_once: int, wait: float = 10.0,
                 deadline: float = 60.0) -> None:
        self.limit = limit
        self.at_once = at_once
        self.wait = wait
        self.deadline = deadline
        self._places = asyncio.Semaphore(at_once)

    async def read(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.strip().isdigit()
                                     or int(declared) > self.limit):
            raise self._too_large()
        try:
            await asyncio.wait_for(self._places.acquire(), self.wait)
        except TimeoutError:
            raise BodyRefused(503, "too many requests are being read: try again") from None
        try:
            async with asyncio.timeout(self.deadline):
                return await self._stream(request)
        except TimeoutError:
            raise BodyRefused(408, f"the body did not arrive within {self.deadline:g} s") from None
        except ClientDisconnect:
            raise BodyRefused(400, "the client went away before its body arrived") from None
        finally:
            self._places.release()

    async def _stream(self, request: Request) -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            if len(body) + len(chunk) > self.limit:
                raise self._too_large()
            body += chunk
        return bytes(body)

    def _too_large(self) -> BodyRefused:
        return BodyRefused(413, f"payload too large: this endpoint takes at most "
                                f"{self.limit:,} bytes")


class BadInput(ValueError):
    """Input that is refused; the message names the field, `status` is the HTTP answer."""

    status = 400


def load_json(text: str | bytes, what: str = "body") -> Any:
    """Parsed JSON, or BadInput naming `what`: malformed, not UTF-8, or nested so deep that
    the parser would run out of stack."""
    try:
        return json.loads(text)
    except RecursionError:
        raise BadInput(f"{what}: JSON nested too deeply") from None
    except ValueError as error:
        raise BadInput(f"{what}: not JSON ({error})") from None


KINDS = {dict: "an object", list: "a list", str: "a string", bool: "true or false",
         int: "a number", float: "a number", type(None): "null"}


def typed(value: Any, kind: type, where: str, optional: bool = False) -> Any:
    """`value` if it is of `kind` (or None, when `optional`), else BadInput naming the
    field and what it holds, e.g. `commits[3].author: expected an object, got a string`."""
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if optional and value is None:
        return None
    found = "nothing" if value is None else KINDS.get(type(value), type(value).__name__)
    raise BadInput(f"{where}: expected {KINDS[kind]}, got {found}")


def release_number(value: Any, what: str = "release") -> int:
    """A release number from outside (a URL, a form, a button): a JSON integer or a string
    of digits, in 1..ID_MAX (the store's integers). ValueError naming `what` otherwise."""
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and in_range(value):
        return value
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:39] + "…"
    raise ValueError(f"{what}: {shown} is not a release number (1 to {ID_MAX:,})")
