"""Built-in synthetics: HTTP checks declared in pipelines.yaml, run against pre-prod.

Each check sends one request and expects a status, text in the body, JSON fields equal to
given values (dotted paths, list indexes as numbers: `data.items.0.id`) and a latency at
most. A check that misses is retried after `retry_delay`; the gate passes when every check
does. Header values may name environment variables as `${NAME}`, so a token never sits in
the config and is masked in results.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import requests
from pydantic import Field, field_validator, model_validator

from gates.support import GateError, GuardedGate
from shiptypes import (
    GateResult,
    Link,
    PreprodTarget,
    ProviderConfig,
    ReleaseRef,
    Seconds,
)

HttpStatus = Annotated[int, Field(ge=100, le=599)]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MISSING = object()


class Expect(ProviderConfig):
    status: HttpStatus | list[HttpStatus] = 200
    contains: list[str] = Field(default_factory=list, description="text the body must contain")
    json_fields: dict[str, Any] = Field(default_factory=dict, alias="json",
                                        description="dotted path → expected value")
    max_latency: Seconds | None = Field(None, gt=0, description="real seconds, e.g. 500ms")

    @field_validator("contains", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class HttpCheck(ProviderConfig):
    name: str = ""
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    path: str = Field("/", pattern=r"^/")
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    json_body: Any = Field(None, alias="json")
    expect: Expect = Expect()
    retries: int = Field(2, ge=0, le=100, description="tries after the first")
    retry_delay: Seconds = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _one_body(self) -> HttpCheck:
        if self.body is not None and self.json_body is not None:
            raise ValueError("give either body or json, not both")
        return self

    @property
    def title(self) -> str:
        return self.name or f"{self.method} {self.path}"


class HttpChecksConfig(ProviderConfig):
    type: Literal["http_checks"]
    name: str = "synthetics"
    checks: list[HttpCheck] = Field(min_length=1)
    request_timeout: float = Field(10.0, gt=0, le=600, description="real seconds for one request")


class HttpChecksGate(GuardedGate[HttpChecksConfig]):
    def secret_names(self) -> set[str]:
        return {name for check in self.config.checks for value in check.headers.values()
                for name in _ENV_REF.findall(value)}

    def check(self, release: ReleaseRef, target: PreprodTarget) -> GateResult:
        if not target.base_url:
            raise GateError(f"pre-prod target {target.name} has no URL to check")
        with requests.Session() as session:
            outcomes = [(check, *self._attempt(session, target.base_url, check))
                        for check in self.config.checks]
        return self._verdict(target, target.base_url, outcomes)

    def _verdict(self, target: PreprodTarget, base_url: str,
                 outcomes: list[tuple[HttpCheck, str | None, bool, int]]) -> GateResult:
        output = "\n".join(f"{'FAIL' if miss else 'ok  '} {check.title}"
                           f"{f': {miss}' if miss else ''} ({tries} tries)"
                           for check, miss, _, tries in outcomes)
        missed = [(check, miss, unreached) for check, miss, unreached, _ in outcomes if miss]
        if not missed:
            return GateResult(self.name, True, f"{len(outcomes)} HTTP checks passed against "
                              f"{target.name}", output_tail=output)
        failed = [m for m in missed if not m[2]]
        check, miss, _ = (failed or missed)[0]
        more = f" (+{len(missed) - 1} more)" if len(missed) > 1 else ""
        links = tuple(Link(c.title, _url(base_url, c)) for c, _, _ in missed)
        # Only a pre-prod that could not be reached at all leaves the verdict open.
        return GateResult(self.name, False, f"check {check.title!r} failed: {miss}{more}",
                          links=links, output_tail=output, errored=not failed)

    def _attempt(self, session: requests.Session, base_url: str,
                 check: HttpCheck) -> tuple[str | None, bool, int]:
        """(why it missed or None, whether it was a network error, tries used)."""
        miss, unreached = None, False
        for attempt in range(check.retries + 1):
            if attempt:
                self._context.clock.sleep(check.retry_delay)
            try:
                response = session.request(
                    check.method, _url(base_url, check), headers=self._headers(check),
                    data=check.body, json=check.json_body,
                    timeout=self.config.request_timeout, allow_redirects=False)
            except requests.RequestException as error:
                miss, unreached = _network_reason(error, self.config.request_timeout), True
                continue
            miss, unreached = _mismatch(check.expect, response), False
            if miss is None:
                return None, False, attempt + 1
        return miss, unreached, check.retries + 1

    def _headers(self, check: HttpCheck) -> dict[str, str]:
        env = self._context.env

        def value(match: re.Match[str]) -> str:
            if match[1] not in env:
                raise GateError(f"check {check.title!r}: {match[1]} is not set")
            return env[match[1]]

        return {k: _ENV_REF.sub(value, v) for k, v in check.headers.items()}


def _url(base_url: str, check: HttpCheck) -> str:
    return base_url.rstrip("/") + check.path


def _network_reason(error: requests.RequestException, timeout: float) -> str:
    if isinstance(error, requests.Timeout):
        return f"no answer within {timeout:g}s"
    return f"cannot reach pre-prod ({type(error).__name__})"


def _mismatch(expect: Expect, response: requests.Response) -> str | None:
    """Why the answer misses what is expected, or None when it matches."""
    wanted = [expect.status] if isinstance(expect.status, int) else expect.status
    if response.status_code not in wanted:
        return f"expected status {_either(wanted)}, got {response.status_code}"
    latency = response.elapsed.total_seconds()
    if expect.max_latency is not None and latency > expect.max_latency:
        return f"took {latency * 1000:.0f} ms, more than {expect.max_latency * 1000:.0f} ms"
    for text in expect.contains:
        if text not in response.text:
            return f"body does not contain {text!r}"
    if expect.json_fields:
        return _json_mismatch(expect.json_fields, response)
    return None


def _json_mismatch(fields: Mapping[str, Any], response: requests.Response) -> str | None:
    try:
        document = response.json()
    except ValueError:
        return "body is not JSON"
    for path, expected in fields.items():
        actual = _dig(document, path)
        if actual is _MISSING:
            return f"JSON field {path} is missing"
        if actual != expected:
            return f"JSON field {path} is {actual!r}, expected {expected!r}"
    return None


def _dig(document: Any, path: str) -> Any:
    node = document
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _either(values: list[int]) -> str:
    return " or ".join(str(v) for v in values)
