"""Where a running `ship serve` can be reached from this machine, and how the CLI asks it.

A person rolling back during an incident should not wait for a CLI process to build every
provider and start Prefect: when a `ship serve` runs on the same store and pipelines file,
the CLI hands it the rollback over HTTP and the server, which has all of it warm, tells the
fleet at once. `ship serve` publishes a handle (URL, pid, a random token) in
`<state dir>/serve.json`, readable by its owner only: whoever can read that file can write
the store beside it anyway. Standard library only: this is the CLI's fast path.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HANDLE_FILE = "serve.json"
DEFAULT_STORE_URL = "sqlite:///.ship/ship.db"  # the store's default (orchestrator.store)
CONNECT_TIMEOUT_S = 2.0


class Unreachable(Exception):
    """The server named by the handle did not answer: the caller acts on its own."""


@dataclass(frozen=True)
class ServeHandle:
    url: str
    pid: int
    token: str
    config: str  # the pipelines file it serves, resolved
    store: str  # store_key() of its store: never the URL, which may hold a password


def database_url() -> str:
    """The store's URL: SHIP_DATABASE_URL, else SQLite under .ship/. Here rather than in
    orchestrator.store so that the CLI's fast path need not import SQLAlchemy to know it."""
    return os.environ.get("SHIP_DATABASE_URL") or DEFAULT_STORE_URL


def store_key(url: str | None = None) -> str:
    """The store's identity, without its credentials: a hash of its URL, with a relative
    SQLite path resolved (two processes in other folders have other stores)."""
    url = url or database_url()
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        url = prefix + str(Path(url[len(prefix):]).resolve())
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def new_token() -> str:
    return secrets.token_urlsafe(32)


def publish(state_dir: Path, handle: ServeHandle) -> Path:
    """Write the handle atomically, readable and writable by this user only."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / HANDLE_FILE
    scratch = path.with_name(f".{HANDLE_FILE}.{os.getpid()}")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(asdict(handle), file)
    os.replace(scratch, path)
    return path


def withdraw(state_dir: Path, pid: int) -> None:
    """Remove the handle if it is still this process's (a newer server may have replaced it)."""
    path = state_dir / HANDLE_FILE
    found = _read(path)
    if found is not None and found.pid == pid:
        path.unlink(missing_ok=True)


def find(state_dir: Path, config: Path, store_url: str | None = None) -> ServeHandle | None:
    """The running server on this store serving this pipelines file, if any."""
    found = _read(state_dir / HANDLE_FILE)
    if found is None or not pid_alive(found.pid):
        return None
    if found.config != str(config.resolve()) or found.store != store_key(store_url):
        return None
    return found


def call(handle: ServeHandle, path: str, body: dict[str, Any],
         timeout: float) -> tuple[int, dict[str, Any]]:
    """POST `body` as JSON; the status and the JSON answer. Unreachable when the server
    does not answer, or answers that it is stopping."""
    request = urllib.request.Request(
        handle.url.rstrip("/") + path, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {handle.token}",
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as answer:
        if answer.code == 503:
            raise Unreachable(f"ship serve at {handle.url} is stopping") from None
        return answer.code, _json(answer.read())
    except (OSError, ValueError) as error:
        raise Unreachable(f"ship serve at {handle.url} did not answer: {error}") from None


def _json(raw: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(raw)
    except ValueError:
        return {"error": raw[:200].decode(errors="replace")}
    return answer if isinstance(answer, dict) else {"error": str(answer)[:200]}


def _read(path: Path) -> ServeHandle | None:
    try:
        return ServeHandle(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (it may be a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
