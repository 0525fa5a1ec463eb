"""Fixtures of the gate tests: a release, a context with secrets in its env, and the tiny
release app (tests/gates/app.py) running as a real process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from shiptypes import Commit, PreprodTarget, ProviderContext, ReleaseRef, Slug, WallClock

APP = Path(__file__).with_name("app.py")
SHA = "0123456789abcdef0123456789abcdef01234567"
SECRETS = {"GITHUB_TOKEN": "ghp_test-token-0123456789", "DD_API_KEY": "dd-api-key-abcdef123",
           "DD_APP_KEY": "dd-app-key-987654fed", "PREPROD_TOKEN": "preprod-s3cret-42"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def assert_no_secret(*texts: object) -> None:
    for text in texts:
        for secret in SECRETS.values():
            assert secret not in str(text)


@pytest.fixture
def release() -> ReleaseRef:
    return ReleaseRef(id=7, pipeline="us", number=42, sha=SHA,
                      slug=Slug("sha256-abc", "file:///tmp/slugs/sha256-abc.tar.gz"),
                      commits=(Commit(SHA, "ada"),))


@pytest.fixture
def context(tmp_path: Path) -> ProviderContext:
    return ProviderContext(pipeline="us", region="us-east-1", clock=WallClock(),
                           env=dict(SECRETS), state_dir=tmp_path)


@pytest.fixture(scope="module")
def app() -> Iterator[PreprodTarget]:
    """The release app, already deployed on pre-prod."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(APP), "--port", str(port), "--sha", "abc1234",
                                "--token", SECRETS["PREPROD_TOKEN"]],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _await_up(url, process)
        yield PreprodTarget("preprod-us", url)
    finally:
        process.terminate()
        process.wait(timeout=5)


def _await_up(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120  # only a hang guard: a busy machine starts it late
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the test app exited at start")
        try:
            requests.get(f"{url}/health", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("the test app did not start")
