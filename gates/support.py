"""What every gate shares: failing closed, timing in pipeline seconds, keeping secrets out
of results, polling with backoff, rendering command templates and running shell commands.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import requests

from shiptypes import (
    Clock,
    GateResult,
    Link,
    PreprodTarget,
    ProviderConfig,
    ProviderContext,
    ReleaseRef,
    check_placeholders,
)

# --- failing closed ---------------------------------------------------------------------


class GateError(Exception):
    """The gate could not reach a verdict. `transient` errors (network, 5xx) may be
    retried by a polling gate; the others end the gate at once."""

    def __init__(self, reason: str, *, transient: bool = False) -> None:
        super().__init__(reason)
        self.transient = transient


Config = TypeVar("Config", bound=ProviderConfig)


class GuardedGate(Generic[Config]):
    """The shape every gate shares: built from `(config, context)`; `run` calls the
    gate's `check` and fails closed, timed and scrubbed of the environment's secrets."""

    def __init__(self, config: Config, context: ProviderContext) -> None:
        self.config = config
        self.name: str = getattr(config, "name")  # noqa: B009 - every gate config has one
        self._context = context

    def run(self, release: ReleaseRef, target: PreprodTarget) -> GateResult:
        secrets = env_secrets(self._context.env, self.secret_names())
        return run_guarded(self.name, self._context.clock, secrets,
                           lambda: self.check(release, target))

    def secret_names(self) -> Iterable[str]:
        """Environment variables to mask besides those named like secrets."""
        return ()

    def check(self, release: ReleaseRef, target: PreprodTarget) -> GateResult:
        raise NotImplementedError


def run_guarded(name: str, clock: Clock, secrets: Iterable[str],
                body: Callable[[], GateResult]) -> GateResult:
    """Runs a gate's body: any error becomes a failed, errored result; the duration is
    measured in pipeline seconds; no secret survives in any field."""
    began = clock.now()
    try:
        result = body()
    except GateError as error:
        result = GateResult(name, False, str(error), errored=True)
    except Exception as error:  # a bug or an answer no one foresaw: still fail closed
        result = GateResult(name, False, f"gate error: {type(error).__name__}: {error}",
                            errored=True)
    took = (clock.now() - began).total_seconds()
    return scrub(replace(result, duration_s=took), secrets)


def scrub(result: GateResult, secrets: Iterable[str]) -> GateResult:
    masks = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
    if not masks:
        return result

    def clean(text: str) -> str:
        for secret in masks:
            text = text.replace(secret, "***")
        return text

    return replace(result, summary=clean(result.summary), output_tail=clean(result.output_tail),
                   links=tuple(Link(clean(k.title), clean(k.url)) for k in result.links))


_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL|AUTH", re.IGNORECASE)


def env_secrets(env: Mapping[str, str], names: Iterable[str] = ()) -> list[str]:
    """Values of the environment that must never be shown: those named, and those whose
    name looks like a secret."""
    named = set(names)
    return [value for key, value in env.items() if key in named or _SECRET_NAME.search(key)]


# --- HTTP answers -------------------------------------------------------------------------


def http_json(session: requests.Session, method: str, url: str, *, vendor: str,
              timeout: float, **kwargs: Any) -> tuple[Any, requests.Response]:
    """One call to a vendor's API, its answer parsed as JSON. Every way it can go wrong
    becomes a GateError that says why and never repeats the request's headers."""
    try:
        response = session.request(method, url, timeout=timeout, **kwargs)
    except requests.Timeout:
        raise GateError(f"{vendor} did not answer within {timeout:g}s", transient=True) from None
    except requests.RequestException as error:
        raise GateError(f"cannot reach {vendor}: {type(error).__name__}", transient=True) from None
    check_status(vendor, response.status_code, response.headers)
    try:
        return response.json(), response
    except ValueError:
        raise GateError(f"{vendor} sent a malformed answer (not JSON)") from None


def check_status(vendor: str, status: int, headers: Mapping[str, str] | None = None) -> None:
    if status in (401, 403):
        limited = headers is not None and headers.get("X-RateLimit-Remaining") == "0"
        why = "rate limit reached" if limited else "credentials refused"
        raise GateError(f"{vendor} {why} (HTTP {status})", transient=limited)
    if status == 429:
        raise GateError(f"{vendor} rate limit reached (HTTP 429)", transient=True)
    if status >= 500:
        raise GateError(f"{vendor} is failing (HTTP {status})", transient=True)
    if status >= 400:
        raise GateError(f"{vendor} refused the request (HTTP {status})")


def require_shape(condition: bool, vendor: str, what: str) -> None:
    if not condition:
        raise GateError(f"{vendor} sent a malformed answer: {what}")


# --- polling --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    first: float
    most: float
    errors: int  # transient errors in a row tolerated before failing closed


def poll(clock: Clock, timeout: float, backoff: Backoff, what: str,
         step: Callable[[], GateResult | str]) -> GateResult:
    """Calls `step` until it returns a result; a string means "still pending: why". Waits
    grow from `first` to `most`, never past the deadline, which is in pipeline seconds."""
    deadline = clock.now() + timedelta(seconds=timeout)
    wait, errors_in_row, pending = backoff.first, 0, "nothing reported yet"
    while True:
        try:
            outcome = step()
            errors_in_row = 0
        except GateError as error:
            errors_in_row += 1
            if not error.transient or errors_in_row > backoff.errors:
                raise
            outcome = f"{error} (try {errors_in_row} of {backoff.errors + 1})"
        if isinstance(outcome, GateResult):
            return outcome
        pending = outcome
        left = (deadline - clock.now()).total_seconds()
        if left <= 0:
            raise GateError(f"{what} did not finish within {timeout:g}s: {pending}")
        clock.sleep(min(wait, left))
        wait = min(wait * 2, backoff.most)


# --- command templates ----------------------------------------------------------------------

PLACEHOLDERS = frozenset({"pipeline", "number", "release", "release_id", "sha", "short_sha",
                          "slug_id", "slug_uri", "target", "base_url", "host", "port"})


def check_template(template: str) -> str:
    """For config validators: a template may use only the known placeholders."""
    return check_placeholders(template, PLACEHOLDERS)


def release_fields(release: ReleaseRef, target: PreprodTarget) -> dict[str, str]:
    url = urlsplit(target.base_url or "")
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    return {"pipeline": release.pipeline, "number": str(release.number),
            "release": release.name, "release_id": str(release.id), "sha": release.sha,
            "short_sha": release.sha[:7], "slug_id": release.slug.id if release.slug else "",
            "slug_uri": release.slug.uri if release.slug else "", "target": target.name,
            "base_url": target.base_url or "", "host": url.hostname or "",
            "port": str(port or "")}


def render(template: str, release: ReleaseRef, target: PreprodTarget, *, shell: bool) -> str:
    """Fills a template; for a shell command every value is quoted, so a field can never
    become shell syntax."""
    values = release_fields(release, target)
    if shell:
        values = {k: shlex.quote(v) if v else "''" for k, v in values.items()}
    return template.format_map(values)


# --- processes ------------------------------------------------------------------------------


class Process:
    """A shell command in its own process group, its output (stdout and stderr
    interleaved) kept in a file so a chatty process can never block on a full pipe."""

    def __init__(self, command: str, *, env: Mapping[str, str], cwd: Path | None,
                 pass_fds: Iterable[int] = ()) -> None:
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        try:
            self._proc = subprocess.Popen(
                command, shell=True, cwd=cwd, env={**os.environ, **env},
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                start_new_session=True, pass_fds=tuple(pass_fds))
        except OSError as error:
            self._log.close()
            raise GateError(f"cannot start the command: {error.strerror}") from None

    def exit_code(self, wait: float = 0.0) -> int | None:
        try:
            return self._proc.wait(timeout=wait) if wait else self._proc.poll()
        except subprocess.TimeoutExpired:
            return None

    def wait_until(self, clock: Clock, seconds: float) -> int | None:
        """The exit code, or None when still running after `seconds` of pipeline time."""
        deadline = clock.now() + timedelta(seconds=seconds)
        while (code := self.exit_code(wait=0.02)) is None:
            if clock.now() >= deadline:
                return None
        return code

    def tail(self, lines: int) -> str:
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - 64 * 1024))
        text = self._log.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 3.0) -> None:
        """Ends the whole process group (the shell and all it started): TERM, then KILL
        after `grace` real seconds, and returns once no member is left running."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not _group_alive(self._proc.pid):
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)
            deadline = time.monotonic() + grace
            while _group_alive(self._proc.pid) and time.monotonic() < deadline:
                self._proc.poll()  # reap the shell, or it stays a member of the group
                time.sleep(0.01)
        self._proc.poll()

    def close(self) -> None:
        self.stop()
        self._log.close()

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError, IndexError):
            continue
        if state != "Z" and int(group) == pgid:
            return True
    return False
