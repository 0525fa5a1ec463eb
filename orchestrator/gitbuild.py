"""The `git` build: the slug is the merged commit, built.

A bare mirror of the repository is kept under the pipeline's state directory and fetched
(never cloned afresh per release), under a file lock so that builds running at once never
corrupt it. The release's SHA is exported with `git archive`, the build command runs in the
export with `sh -c`, a timeout that kills its whole process group, HOME and TMPDIR inside the
build's own scratch directory, an environment made only of `env` from config (plus PATH,
SHIP_SHA and SHIP_PIPELINE), and its output in a log file that is kept. The result is packed
(orchestrator.tarball.pack) into the deterministic tarball slug and stored once per digest.

The same SHA built with the same command (and `env`) is built once: the store keeps a small
index entry per build key, and a second release of that SHA reuses the stored slug.

What "writes outside its directory" covers: the result is refused when it holds a symlink
resolving outside the export, or anything but files, directories and symlinks; names in the
slug are relative and never `..` (they come from walking the export). What it does not
cover: a command that writes to an absolute path it can reach (/var/tmp, the operator's
files) is not stopped; HOME and TMPDIR only steer well-behaved tools. Run ship as a user who
can write little, or in a container, when the repository is not trusted.

Untrusted text stays text: the SHA reaches git as one argument-list element (checked to be
hex first) and the build command only through SHIP_SHA. A GITHUB_TOKEN reaches git through
`http.extraHeader` in its environment (GIT_CONFIG_COUNT…), never in a URL, an argument, a
log, an event or the slug.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NoReturn
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator

from orchestrator.slugstore import LocalStoreConfig, SlugConflict, StoreConfig, open_store
from orchestrator.tarball import pack
from shiptypes import BuildFailed, ProviderConfig, ProviderContext, ReleaseRef, Seconds, Slug

SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
TAIL_BYTES = 64 * 1024
MAX_LINE = 300


class GitBuildConfig(ProviderConfig):
    type: Literal["git"]
    repo: str = Field(min_length=1, description="the repository: a path, a file:// URL or "
                      "an https:// URL (GITHUB_TOKEN, or `token_env`, for a private one)")
    command: str | None = Field(None, description="run with `sh -c` in the exported commit, "
                                "e.g. `npm ci --omit=dev`; none: the commit as it is")
    timeout: Seconds = Field(900.0, gt=0, description="the build command's deadline")
    fetch_timeout: Seconds = Field(300.0, gt=0, description="deadline of one git fetch")
    env: dict[str, str] = Field(default_factory=dict,
                                description="the build command's environment (not secrets)")
    token_env: str = Field("GITHUB_TOKEN", description="environment variable with the token "
                           "for an https repo")
    ca_file: str | None = Field(None, description="CA bundle for an https repo's certificate")
    store: StoreConfig = Field(default_factory=LocalStoreConfig)
    log_lines: int = Field(30, ge=1, le=1000, description="last log lines in a failure")

    @field_validator("repo")
    @classmethod
    def _known_repo(cls, repo: str) -> str:
        parts = urlsplit(repo)
        if parts.scheme == "https":
            if parts.username or parts.password:
                raise ValueError("credentials never go in the URL: ship sends the token in "
                                 "`token_env` as a header")
            return repo
        if parts.scheme not in ("", "file"):
            raise ValueError(f"{repo!r}: use a path, a file:// URL or an https:// URL")
        path = _path(repo)
        if not path.is_dir():
            raise ValueError(f"repository {str(path)!r} does not exist (or is not a directory)")
        return repo

    def check_repo(self, name: str) -> str | None:
        """Why the pipeline's `repo.name` (what webhooks name) cannot be this repository."""
        parts = urlsplit(self.repo)
        if parts.scheme != "https":
            return None  # a local repository has no owner/name to compare
        path = parts.path.strip("/").removesuffix(".git").split("/")
        if "/".join(path[-2:]).lower() != name.lower():
            return (f"{self.repo!r} is not the pipeline's repo {name!r}: webhooks for {name} "
                    "would ship commits of another repository")
        return None


def _path(repo: str) -> Path:
    parts = urlsplit(repo)
    return Path(unquote(parts.path)) if parts.scheme == "file" else Path(repo)


class GitBuilder:
    """Builds `Slug(id="sha256-<16 hex>", uri=<the store's URI>)` from the release's SHA."""

    def __init__(self, config: GitBuildConfig, context: ProviderContext) -> None:
        self.config = config
        self.context = context
        self.store = open_store(config.store, context)
        self.root = context.state_dir / "git"
        self.mirror = Mirror(config, context.env, self.root)

    def build(self, release: ReleaseRef) -> Slug:
        sha = release.sha.lower()
        if not SHA.fullmatch(sha):
            raise BuildFailed(f"{release.sha[:80]!r} is not a commit id (40 or 64 hex digits)")
        key = self._key(sha)
        index = f"builds/{key}.json"
        with _locked(self.root / "locks" / f"build-{key[:32]}.lock"):
            if self.store.find(index) is not None:
                return _slug(json.loads(self.store.get(index)), cached=True)
            self.mirror.ensure(sha)
            facts = self._built(release, sha, key)
            try:
                self.store.put(index, _json(facts))
            except SlugConflict:  # another machine built it first: use theirs
                facts = json.loads(self.store.get(index))
        return _slug(facts, cached=False)

    def _key(self, sha: str) -> str:
        what = {"repo": self.config.repo, "sha": sha, "command": self.config.command,
                "env": self.config.env}
        return hashlib.sha256(_json(what)).hexdigest()

    def _built(self, release: ReleaseRef, sha: str, key: str) -> dict[str, Any]:
        log = self.root / "logs" / f"{sha[:12]}-{key[:12]}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"build-{sha[:12]}-", dir=self._scratch_root()))
        try:
            export = scratch / "src"
            self.mirror.export(sha, export)
            began = time.monotonic()
            self._run(release, sha, scratch, log)
            duration = round(time.monotonic() - began, 3)
            refuse_escapes(export)
            doc = {"pipeline": release.pipeline, "sha": sha, "repo": self.config.repo,
                   "build": {"command": self.config.command, "duration_s": duration,
                             "log": str(log.resolve())}}
            data = pack(export, _json(doc, indent=2))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        digest = hashlib.sha256(data).hexdigest()
        uri = self.store.put(f"{digest}.tar.gz", data)
        return {"id": f"sha256-{digest[:16]}", "uri": uri, "size": len(data), "sha": sha,
                "command": self.config.command, "duration_s": duration,
                "log": str(log.resolve())}

    def _scratch_root(self) -> Path:
        root = self.root / "scratch"
        root.mkdir(parents=True, exist_ok=True)
        return root

    def _run(self, release: ReleaseRef, sha: str, scratch: Path, log: Path) -> None:
        """The build command in the export, its output in `log`; BuildFailed if it fails."""
        with log.open("wb") as out:
            if self.config.command is None:
                return
            for inside in ("home", "tmp"):
                (scratch / inside).mkdir()
            env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8",
                   **self.config.env, "HOME": str(scratch / "home"),
                   "TMPDIR": str(scratch / "tmp"), "SHIP_SHA": sha,
                   "SHIP_PIPELINE": release.pipeline}
            code = run_bounded(["sh", "-c", self.config.command], scratch / "src", env, out,
                               self.config.timeout)
        if code is None:
            self._fail(f"the build command timed out after {self.config.timeout:g}s", log)
        if code != 0:
            self._fail(f"the build command exited with {code}", log)

    def _fail(self, reason: str, log: Path) -> NoReturn:
        raise BuildFailed(f"{reason} (log: {log.resolve()})",
                          log_tail=tail(log, self.config.log_lines))


class Mirror:
    """The bare mirror of one repository, fetched under a file lock."""

    def __init__(self, config: GitBuildConfig, env: Mapping[str, str], root: Path) -> None:
        self.config = config
        self.url = config.repo if urlsplit(config.repo).scheme else str(_path(config.repo)
                                                                        .resolve())
        self.path = root / "mirrors" / f"{hashlib.sha256(self.url.encode()).hexdigest()[:16]}.git"
        self._env = git_env(config, env)

    def ensure(self, sha: str) -> None:
        """Fetch unless the mirror has `sha`; BuildFailed if the repository lacks it."""
        with _locked(self.path.with_suffix(".lock")):
            if self._has(sha):
                return
            if not self.path.exists():
                self._git("init", "--bare", "--quiet", str(self.path), bare=False)
            self._git("fetch", "--quiet", "--prune", "--", self.url,
                      "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
            if not self._has(sha):
                raise BuildFailed(f"commit {sha} is not in {self.config.repo}")

    def export(self, sha: str, into: Path) -> None:
        """Exactly `sha`'s tree (`git archive`), unpacked with tarfile's data filter."""
        into.mkdir()
        with tempfile.TemporaryFile(dir=into.parent) as archive:
            self._git("archive", "--format=tar", sha, out=archive)
            archive.seek(0)
            try:
                with tarfile.open(fileobj=archive) as tar:
                    tar.extractall(into, filter="data")
            except tarfile.FilterError as error:  # e.g. a committed symlink to /etc
                raise BuildFailed(f"commit {sha} cannot be exported: {error}") from None

    def _has(self, sha: str) -> bool:
        if not self.path.exists():
            return False
        found = subprocess.run(["git", "--git-dir", str(self.path), "cat-file", "-e",
                                f"{sha}^{{commit}}"], env=self._env, capture_output=True)
        return found.returncode == 0

    def _git(self, *args: str, bare: bool = True, out: Any = None) -> None:
        command = ["git", *(["--git-dir", str(self.path)] if bare else []), *args]
        try:
            done = subprocess.run(command, env=self._env, stdout=out or subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=self.config.fetch_timeout)
        except subprocess.TimeoutExpired:
            raise BuildFailed(f"git {args[0]} of {self.config.repo} timed out after "
                              f"{self.config.fetch_timeout:g}s") from None
        if done.returncode != 0:
            said = _last_line(done.stderr.decode(errors="replace"))
            raise BuildFailed(f"git {args[0]} of {self.config.repo} failed: {said}")


def git_env(config: GitBuildConfig, env: Mapping[str, str]) -> dict[str, str]:
    """git's environment: no prompt, no user or system config, and for an https repo the
    token as an Authorization header passed by environment (never a URL or an argument)."""
    git = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C",
           "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": os.devnull, "HOME": os.devnull}
    settings: list[tuple[str, str]] = []
    token = env.get(config.token_env)
    if urlsplit(config.repo).scheme == "https" and token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        settings.append(("http.extraHeader", f"Authorization: Basic {basic}"))
    if config.ca_file:
        settings.append(("http.sslCAInfo", config.ca_file))
    git["GIT_CONFIG_COUNT"] = str(len(settings))
    for i, (key, value) in enumerate(settings):
        git[f"GIT_CONFIG_KEY_{i}"], git[f"GIT_CONFIG_VALUE_{i}"] = key, value
    return git


def run_bounded(argv: list[str], cwd: Path, env: dict[str, str], out: Any,
                timeout: float) -> int | None:
    """Run `argv` in a process group of its own; its exit code, or None when it outlived
    `timeout` (then the whole group is killed, so no grandchild lingers)."""
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # what the command left running, too
        process.wait()


def refuse_escapes(export: Path) -> None:
    """BuildFailed if the build left a symlink resolving outside `export`, or a file that is
    neither regular, a directory nor a symlink (a fifo, a socket, a device)."""
    root = export.resolve()
    for directory, subdirectories, files in os.walk(export):
        for name in subdirectories + files:
            path = Path(directory) / name
            shown = path.relative_to(export).as_posix()
            if path.is_symlink():
                if not path.resolve().is_relative_to(root):
                    raise BuildFailed(f"the build left {shown!r}, a symlink to "
                                      f"{os.readlink(path)!r} outside its directory")
            elif not (path.is_file() or path.is_dir()):
                raise BuildFailed(f"the build left {shown!r}, which is not a file or directory")


def tail(log: Path, lines: int) -> str:
    """The last `lines` lines of `log`, each cut to a readable length."""
    with log.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - TAIL_BYTES))
        text = file.read().decode(errors="replace")
    kept = text.splitlines()[-lines:]
    return "\n".join(line if len(line) <= MAX_LINE else line[:MAX_LINE] + "…" for line in kept)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:MAX_LINE] if lines else "no message"


def _slug(facts: dict[str, Any], cached: bool) -> Slug:
    build = {k: facts[k] for k in ("sha", "command", "duration_s", "log")} | {"cached": cached}
    return Slug(id=facts["id"], uri=facts["uri"], size=facts["size"], build=build)


def _json(doc: Any, indent: int | None = None) -> bytes:
    return (json.dumps(doc, indent=indent, sort_keys=True) + "\n").encode()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
