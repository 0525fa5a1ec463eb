"""The `git` build with real git: repositories made by the test, the build command run for
real, the slug unpacked and read; and its bad inputs, each a BuildFailed with one line and
the log's last lines."""

from __future__ import annotations

import base64
import io
import json
import re
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from orchestrator import config
from orchestrator.gitbuild import GitBuildConfig, GitBuilder
from orchestrator.slugs import BuildFailed
from orchestrator.slugstore import LocalSlugStore
from shiptypes import ProviderContext, ReleaseRef, Slug
from tests.conftest import SIM_PIPELINES
from tests.gitrepo import Repo, https_repo

TOKEN = "ghp_not-a-real-token-0123456789abcdef"


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "app")


def builder(tmp_path: Path, repo: str | Path, env: dict[str, str] | None = None,
            **config: Any) -> GitBuilder:
    store = config.pop("store", {"type": "local", "path": str(tmp_path / "slugs")})
    built = GitBuildConfig(type="git", repo=str(repo), store=store, **config)
    context = ProviderContext(pipeline="us", region="us-east-1", env=env or {},
                              state_dir=tmp_path / ".ship" / "us")
    return GitBuilder(built, context)


def release(sha: str, number: int = 1) -> ReleaseRef:
    return ReleaseRef(id=number, pipeline="us", number=number, sha=sha)


def unpacked(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def slug_files(tmp_path: Path, slug: Slug) -> dict[str, bytes]:
    return unpacked(LocalSlugStore(tmp_path / "slugs").get(slug.uri.rsplit("/", 1)[1]))


def test_the_slug_is_the_given_commit_with_the_build_commands_output(
        tmp_path: Path, repo: Repo) -> None:
    first = repo.commit({"app.py": "print('one')\n"})
    repo.commit({"app.py": "print('two')\n"})  # the branch head: not what is built
    build = builder(tmp_path, repo.path,
                    command='echo "built $SHIP_SHA" > out.txt; echo "home=$HOME tmp=$TMPDIR"')
    slug = build.build(release(first))

    files = slug_files(tmp_path, slug)
    assert files["app.py"] == b"print('one')\n"
    assert files["out.txt"] == f"built {first}\n".encode()
    doc = json.loads(files["release.json"])
    assert doc["sha"] == first and doc["build"]["command"].startswith("echo")
    assert doc["build"]["duration_s"] >= 0
    log = Path(doc["build"]["log"])
    home, tmp = re.search(r"home=(\S+) tmp=(\S+)", log.read_text()).groups()
    scratch = tmp_path / ".ship" / "us" / "git" / "scratch"
    assert Path(home).is_relative_to(scratch) and Path(tmp).is_relative_to(scratch)
    assert slug.build == {"sha": first, "command": doc["build"]["command"], "cached": False,
                          "duration_s": doc["build"]["duration_s"], "log": str(log)}


def test_the_same_sha_and_command_is_built_once(tmp_path: Path, repo: Repo) -> None:
    sha = repo.commit({"app.py": "x = 1\n"})
    count = tmp_path / "count"
    once = builder(tmp_path, repo.path, command=f"echo built >> {count}")
    first = once.build(release(sha, 1))
    # Another ship process (no memory of the first) finds the build in the store.
    again = builder(tmp_path, repo.path, command=f"echo built >> {count}").build(release(sha, 2))
    assert again == first and again.build["cached"] and not first.build["cached"]
    assert count.read_text() == "built\n"

    other = builder(tmp_path, repo.path, command=f"echo other >> {count}").build(release(sha, 3))
    assert other.build is not None and not other.build["cached"]
    assert count.read_text() == "built\nother\n"


def test_builds_at_once_share_the_mirror_unharmed(tmp_path: Path, repo: Repo) -> None:
    shas = [repo.commit({"n.txt": f"{n}\n"}) for n in range(4)]
    build = builder(tmp_path, repo.path, command="cat n.txt > copy.txt")
    slugs: dict[str, Slug] = {}
    threads = [threading.Thread(target=lambda s=sha: slugs.__setitem__(s, build.build(
        release(s)))) for sha in shas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [slug_files(tmp_path, slugs[sha])["copy.txt"] for sha in shas] == [
        f"{n}\n".encode() for n in range(4)]


def failure(build: GitBuilder, sha: str) -> BuildFailed:
    with pytest.raises(BuildFailed) as raised:
        build.build(release(sha))
    assert "\n" not in str(raised.value)
    return raised.value


def test_a_sha_not_in_the_repository_fails_the_build(tmp_path: Path, repo: Repo) -> None:
    repo.commit({"app.py": "x = 1\n"})
    error = failure(builder(tmp_path, repo.path), "ab" * 20)
    assert str(error) == f"commit {'ab' * 20} is not in {repo.path}"
    assert "not a commit id" in str(failure(builder(tmp_path, repo.path), "main; rm -rf /"))


def test_a_failing_build_command_fails_with_its_log_tail(tmp_path: Path, repo: Repo) -> None:
    sha = repo.commit({"app.py": "x = 1\n"})
    command = "for n in $(seq 1 100); do echo line $n; done; echo 'npm ERR! missing'; exit 3"
    error = failure(builder(tmp_path, repo.path, command=command, log_lines=5), sha)
    assert str(error).startswith("the build command exited with 3 (log: ")
    assert error.log_tail.splitlines() == ["line 97", "line 98", "line 99", "line 100",
                                           "npm ERR! missing"]


def test_a_build_command_that_outlives_its_timeout_is_killed_with_its_children(
        tmp_path: Path, repo: Repo) -> None:
    sha = repo.commit({"app.py": "x = 1\n"})
    command = "sleep 300 & echo \"child $!\"; wait"
    error = failure(builder(tmp_path, repo.path, command=command, timeout=1), sha)
    assert str(error).startswith("the build command timed out after 1s")
    child = int(re.search(r"child (\d+)", error.log_tail).group(1))
    stat = Path(f"/proc/{child}/stat")
    deadline = time.monotonic() + 30  # guards against a hang only
    while stat.exists() and stat.read_text().split(")")[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the build's child outlived its timeout"
        time.sleep(0.05)


def test_an_unreachable_repository_fails_the_build(tmp_path: Path) -> None:
    build = builder(tmp_path, "https://127.0.0.1:9/example/chat.git", fetch_timeout=60)
    error = failure(build, "ab" * 20)
    assert str(error).startswith("git fetch of https://127.0.0.1:9/example/chat.git failed: ")


def test_a_build_that_links_outside_its_directory_is_refused(tmp_path: Path, repo: Repo) -> None:
    sha = repo.commit({"app.py": "x = 1\n"})
    error = failure(builder(tmp_path, repo.path, command="ln -s /etc/passwd leak"), sha)
    assert str(error) == "the build left 'leak', a symlink to '/etc/passwd' outside its directory"
    inside = builder(tmp_path, repo.path, command="ln -s app.py main.py").build(release(sha))
    assert "app.py" in slug_files(tmp_path, inside)


def test_a_committed_symlink_out_of_the_tree_is_refused(tmp_path: Path, repo: Repo) -> None:
    (repo.path / "secrets").symlink_to("/etc/passwd")
    sha = repo.commit({"app.py": "x = 1\n"})
    error = failure(builder(tmp_path, repo.path), sha)
    assert error.args[0].startswith(f"commit {sha} cannot be exported: ")


def test_a_private_https_repository_gets_the_token_only_as_a_header(
        tmp_path: Path, repo: Repo) -> None:
    sha = repo.commit({"app.py": "x = 1\n"})
    served = tmp_path / "served"
    repo.bare(served / "example" / "chat.git")
    basic = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    with https_repo(served, tmp_path, "example/chat", f"Basic {basic}") as remote:
        refused = builder(tmp_path / "a", remote.url, ca_file=str(remote.ca_file))
        assert "git fetch" in str(failure(refused, sha))
        build = builder(tmp_path / "b", remote.url, env={"GITHUB_TOKEN": TOKEN},
                        ca_file=str(remote.ca_file), command="env; echo done")
        slug = build.build(release(sha))
    assert f"Basic {basic}" in remote.authorizations
    assert TOKEN not in remote.url
    files = slug_files(tmp_path / "b", slug)
    log = Path(slug.build["log"]).read_text()
    assert "done" in log
    kept = [log, json.dumps(slug.build), *(f.decode(errors="replace") for f in files.values())]
    kept += [p.read_text(errors="replace") for p in (tmp_path / "b").rglob("*")
             if p.is_file() and "objects" not in p.parts]
    assert not [text for text in kept if TOKEN in text or basic in text]


def test_the_slug_and_its_build_go_to_s3(tmp_path: Path, repo: Repo) -> None:
    sha = repo.commit({"app.py": "x = 1\n"})
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    store = {"type": "s3", "bucket": "slugs", "prefix": "chat/"}
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1", **{k.lower(): v for k, v in
                                                             keys.items()})
        s3.create_bucket(Bucket="slugs")
        slug = builder(tmp_path, repo.path, env=keys, store=store).build(release(sha))
        again = builder(tmp_path, repo.path, env=keys, store=store).build(release(sha, 2))
        listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="slugs")["Contents"])
        body = s3.get_object(Bucket="slugs", Key=slug.uri.removeprefix("s3://slugs/"))
        files = unpacked(body["Body"].read())
    assert slug.uri.startswith("s3://slugs/chat/") and again.build["cached"]
    assert len(listed) == 2 and sum(key.startswith("chat/builds/") for key in listed) == 1
    assert json.loads(files["release.json"])["sha"] == sha


# --- ship validate ------------------------------------------------------------------------


def pipelines_with(build: str) -> str:
    return SIM_PIPELINES.replace("  build: {type: sim}\n", f"  build: {build}\n")


def test_validate_refuses_a_repository_path_that_does_not_exist(tmp_path: Path) -> None:
    text = pipelines_with(f"{{type: git, repo: {tmp_path / 'gone'}, command: make}}")
    with pytest.raises(config.ConfigError) as raised:
        config.parse(text)
    line = text.splitlines().index(next(x for x in text.splitlines() if "type: git" in x)) + 1
    assert str(raised.value.problems[0]) == (
        f"pipelines.yaml:{line}: pipelines.us.build.repo: repository "
        f"'{tmp_path / 'gone'}' does not exist (or is not a directory)")


def test_validate_refuses_an_https_repo_other_than_the_pipelines(tmp_path: Path) -> None:
    text = pipelines_with("{type: git, repo: 'https://github.com/example/billing.git'}")
    with pytest.raises(config.ConfigError) as raised:
        config.parse(text)
    assert "is not the pipeline's repo 'example/chat'" in str(raised.value)
    assert str(raised.value.problems[0]).startswith("pipelines.yaml:")
    ok = pipelines_with("{type: git, repo: 'https://github.com/Example/chat.git'}")
    assert config.parse(ok).pipeline("us").build.repo.endswith("chat.git")
    with pytest.raises(config.ConfigError, match="credentials never go in the URL"):
        config.parse(pipelines_with("{type: git, repo: 'https://x:y@github.com/example/chat'}"))
