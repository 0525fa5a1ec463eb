"""The `git` build inside the real release flow (Prefect engine, simulated fleets): a failed
build fails the release with its reason, and the log's last lines reach the events and the
notifiers; a re-run of a built commit reuses its slug and says so."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from orchestrator.notify import slack
from orchestrator.release import State
from orchestrator.runner import Runner
from shiptypes import Commit
from tests.gitrepo import Repo
from tests.test_flows import _deploy_and_settle, world

pytestmark = pytest.mark.usefixtures("prefect_api")


def git_world(tmp_path: Path, folder: str, repo: Repo, command: str) -> tuple[Runner, Any, Any]:
    (tmp_path / folder).mkdir()
    return world(tmp_path / folder, {"build": {
        "type": "git", "repo": str(repo.path), "command": command,
        "store": {"type": "local", "path": str(tmp_path / "slugs")}}})


def ship(runner: Runner, sha: str) -> int:
    commit = Commit(sha, "ann", "change", runner.ship.clock.now())
    return asyncio.run(_deploy_and_settle(runner, commit, watch=False)).release.id


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repo:
    monkeypatch.chdir(tmp_path)  # the pipeline's state (the mirror, build logs) is ./.ship
    return Repo(tmp_path / "app")


def test_a_failed_build_fails_the_release_with_its_log_tail(tmp_path: Path, repo: Repo) -> None:
    sha = repo.commit({"package.json": "{}\n"})
    runner, store, recorder = git_world(tmp_path, "one", repo,
                                        "echo 'npm ERR! <b>missing</b> `x`'; exit 3")
    release = store.release(ship(runner, sha))

    assert release.state == State.FAILED and release.slug is None
    assert release.reason.startswith("the build command exited with 3 (log: ")
    [event] = [e for e in store.events("us", release_id=release.id) if e.kind == "build_log"]
    assert event.data["log_tail"] == "npm ERR! <b>missing</b> `x`"
    notice = next(n for n in recorder.notices if n.kind == "halted")
    assert notice.text == f"{release.name} failed: {release.reason}"
    _, blocks = slack.message(release, [], None, False, notice, {})
    shown = [b["text"]["text"] for b in blocks if b.get("text")]
    assert "*build log, last lines*\n```npm ERR! &lt;b&gt;missing&lt;/b&gt; `x````" in shown
    assert store.pipeline_state("us").in_flight is None  # the pipeline is free again


def test_a_rerun_of_a_built_commit_reuses_its_slug(tmp_path: Path, repo: Repo) -> None:
    sha = repo.commit({"app.py": "x = 1\n"})
    runner, store, _ = git_world(tmp_path, "one", repo, "echo built > out.txt")
    first = store.release(ship(runner, sha))
    assert first.state in (State.LIVE, State.DONE) and not first.slug.build["cached"]
    assert first.slug.build["sha"] == sha and first.slug.build["command"] == "echo built > out.txt"
    assert Path(first.slug.build["log"]).is_file()

    runner, store, _ = git_world(tmp_path, "two", repo, "echo built > out.txt")
    again = store.release(ship(runner, sha))
    assert again.slug == first.slug and again.slug.build["cached"]
    [cached] = [e for e in store.events("us", release_id=again.id) if e.kind == "slug_cached"]
    assert cached.message == (f"{again.name} reuses slug {first.slug.id}: {sha[:12]} was "
                              "built with this command before")
