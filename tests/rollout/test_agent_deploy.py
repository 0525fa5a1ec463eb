"""`ship agent deploy`: what a fleet's remote command runs on a host. It tells the running agent
which release it wants (file:// slugs as they are, s3:// ones downloaded once, nothing for a
kept release) and waits for the host's outcome."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import boto3
import pytest
import requests
from moto import mock_aws

from rollout import agent
from shiptypes import ReleaseRef
from tests.rollout.conftest import wait_for

AGENT = Path(agent.__file__)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Path]:
    """A running agent with 2 workers; its root."""
    root = tmp_path / "host"
    process = subprocess.Popen(
        [sys.executable, str(AGENT), "--root", str(root), "--port", "0", "--workers", "2",
         "--drain-timeout", "2", "--idle-grace", "0.2", "--boot-timeout", "10"],
        stderr=subprocess.DEVNULL)
    wait_for(lambda: (agent.read_json(root / "status.json") or {}).get("port"), "the agent")
    yield root
    process.terminate()
    process.wait(timeout=15)


def serving(root: Path) -> str:
    port = agent.read_json(root / "status.json")["port"]
    return requests.get(f"http://127.0.0.1:{port}/").headers["X-Release"]


def deploy(root: Path, release: ReleaseRef, uri: str | None = None) -> int:
    assert release.slug
    return agent.main(["deploy", "--release", release.name, "--slug", uri or release.slug.uri,
                       "--stagger", "0", "--root", str(root), "--timeout", "30"])


def test_deploy_waits_for_the_host_to_converge_or_fail(
        host: Path, tarball_release: Callable[..., ReleaseRef],
        capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy(host, tarball_release(1)) == 0
    assert serving(host) == "test#1"

    assert deploy(host, tarball_release(2, crash_on_boot=True)) == 1
    assert "failed: worker" in capsys.readouterr().out
    assert serving(host) == "test#1"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="slugs")
        yield client


def test_an_s3_slug_is_downloaded_once_and_a_kept_release_not_at_all(
        host: Path, tarball_release: Callable[..., ReleaseRef], s3: object) -> None:
    one, two = tarball_release(1), tarball_release(2)
    assert one.slug and two.slug
    for release in (one, two):
        assert release.slug
        s3.upload_file(url2pathname(urlsplit(release.slug.uri).path), "slugs",  # type: ignore[attr-defined]
                       f"slugs/{release.slug.id}.tar.gz")

    assert deploy(host, one, f"s3://slugs/slugs/{one.slug.id}.tar.gz") == 0
    assert deploy(host, two, f"s3://slugs/slugs/{two.slug.id}.tar.gz") == 0
    assert serving(host) == "test#2"
    assert sorted(p.name for p in (host / "slugs").iterdir()) == sorted(
        f"{r.slug.id}.tar.gz" for r in (one, two) if r.slug)

    s3.delete_object(Bucket="slugs", Key=f"slugs/{one.slug.id}.tar.gz")  # type: ignore[attr-defined]
    (host / "slugs" / f"{one.slug.id}.tar.gz").unlink()
    assert deploy(host, one, f"s3://slugs/slugs/{one.slug.id}.tar.gz") == 0  # kept: no download
    assert serving(host) == "test#1"


def test_deploy_without_a_running_agent_fails_at_once(
        tmp_path: Path, tarball_release: Callable[..., ReleaseRef]) -> None:
    assert deploy(tmp_path / "nobody", tarball_release(1)) == 1
    assert not (tmp_path / "nobody").exists()
