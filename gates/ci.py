"""The CI gate: GitHub's verdict on the release's commit.

Reads both places GitHub keeps CI results for a commit, the combined status (older
integrations, `statuses`) and the check runs (GitHub Actions and apps), and waits with
backoff while any is pending. Any failing check that is not an allowed failure fails the
gate at once, naming the checks with their links. Checks named in `require` must be
reported and pass.

For CI that runs as a local command, use the command gate (`type: command`) as the `ci:`
block: any gate config is valid there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

import requests
from pydantic import Field

from gates.support import (
    Backoff,
    GateError,
    GuardedGate,
    http_json,
    poll,
    require_shape,
)
from shiptypes import (
    GateResult,
    Link,
    PreprodTarget,
    ProviderConfig,
    ReleaseRef,
    Seconds,
)

VENDOR = "GitHub"
MAX_PAGES = 10
PASSING = frozenset({"success", "neutral", "skipped"})


class GitHubCIConfig(ProviderConfig):
    type: Literal["github_ci"]
    name: str = "ci"
    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$", description="owner/name")
    api_url: str = Field("https://api.github.com", description="GitHub Enterprise: .../api/v3")
    token_env: str = Field("GITHUB_TOKEN", description="environment variable with the token")
    require: list[str] = Field(default_factory=list, description="checks that must pass")
    allow_failures: list[str] = Field(default_factory=list,
                                      description="checks ignored (names or glob patterns)")
    timeout: Seconds = Field(1800.0, gt=0, description="deadline for CI to finish")
    interval: Seconds = Field(10.0, gt=0, description="first wait between polls; doubles")
    max_interval: Seconds = Field(60.0, gt=0)
    max_errors: int = Field(3, ge=0, le=100,
                            description="network errors and 5xx in a row tolerated")
    request_timeout: float = Field(10.0, gt=0, le=600, description="real seconds for one API call")


@dataclass(frozen=True)
class Check:
    name: str
    state: Literal["pending", "success", "failure"]
    outcome: str  # GitHub's own word: failure, cancelled, timed_out, error...
    url: str


class GitHubCIGate(GuardedGate[GitHubCIConfig]):
    def secret_names(self) -> list[str]:
        return [self.config.token_env]

    def check(self, release: ReleaseRef, target: PreprodTarget) -> GateResult:
        token = self._context.env.get(self.config.token_env)
        if not token:
            raise GateError(f"{self.config.token_env} is not set: cannot read CI from GitHub")
        config = self.config
        backoff = Backoff(config.interval, config.max_interval, config.max_errors)
        with requests.Session() as session:
            session.headers.update({"Authorization": f"Bearer {token}",
                                    "Accept": "application/vnd.github+json",
                                    "X-GitHub-Api-Version": "2022-11-28"})
            return poll(self._context.clock, config.timeout, backoff, f"CI for {release.sha[:7]}",
                        lambda: self._verdict(self._checks(session, release.sha), release.sha))

    def _checks(self, session: requests.Session, sha: str) -> list[Check]:
        commit = f"{self.config.api_url.rstrip('/')}/repos/{self.config.repo}/commits/{sha}"
        statuses = [_status_check(s) for s in self._pages(session, f"{commit}/status", "statuses")]
        newest: dict[str, dict[str, Any]] = {}
        for run in self._pages(session, f"{commit}/check-runs", "check_runs"):
            require_shape(isinstance(run.get("name"), str), VENDOR, "a check run has no name")
            if run["name"] not in newest or run.get("id", 0) > newest[run["name"]].get("id", 0):
                newest[run["name"]] = run  # a re-run is a newer check run of the same name
        return statuses + [_run_check(r) for r in newest.values()]

    def _pages(self, session: requests.Session, url: str, key: str) -> Iterator[dict[str, Any]]:
        next_url: str | None = url
        params: dict[str, int] | None = {"per_page": 100}
        for _ in range(MAX_PAGES):
            if next_url is None:
                return
            body, response = http_json(session, "GET", next_url, params=params, vendor=VENDOR,
                                       timeout=self.config.request_timeout)
            items = body.get(key) if isinstance(body, dict) else None
            require_shape(isinstance(items, list) and all(isinstance(i, dict) for i in items),
                          VENDOR, f"no list of {key}")
            yield from items
            next_url, params = response.links.get("next", {}).get("url"), None

    def _verdict(self, checks: list[Check], sha: str) -> GateResult | str:
        counted = [c for c in checks if not self._allowed(c.name)]
        failing = [c for c in counted if c.state == "failure"]
        if failing:
            named = ", ".join(f"{c.name} ({c.outcome})" for c in failing)
            return GateResult(self.name, False, f"CI failed at {sha[:7]}: {named}",
                              links=tuple(Link(c.name, c.url) for c in failing if c.url))
        reported = {c.name for c in checks}
        missing = [n for n in self.config.require if n not in reported]
        pending = [c.name for c in counted if c.state == "pending"]
        if pending or missing or not counted:
            return _pending_reason(pending, missing)
        ignored = len(checks) - len(counted)
        note = f" ({ignored} allowed to fail)" if ignored else ""
        return GateResult(self.name, True,
                          f"CI passed at {sha[:7]}: {len(counted)} checks green{note}")

    def _allowed(self, name: str) -> bool:
        if name in self.config.require:
            return False
        return any(fnmatchcase(name, pattern) for pattern in self.config.allow_failures)


def _status_check(status: dict[str, Any]) -> Check:
    name, state = status.get("context"), status.get("state")
    require_shape(isinstance(name, str) and isinstance(state, str), VENDOR,
                  "a commit status has no context or state")
    verdict = {"success": "success", "pending": "pending"}.get(state, "failure")
    return Check(name, verdict, state, status.get("target_url") or "")


def _run_check(run: dict[str, Any]) -> Check:
    url = run.get("html_url") or run.get("details_url") or ""
    if run.get("status") != "completed":
        return Check(run["name"], "pending", str(run.get("status")), url)
    conclusion = str(run.get("conclusion"))
    return Check(run["name"], "success" if conclusion in PASSING else "failure", conclusion, url)


def _pending_reason(pending: list[str], missing: list[str]) -> str:
    parts = []
    if pending:
        parts.append("pending: " + ", ".join(pending))
    if missing:
        parts.append("required but not reported: " + ", ".join(missing))
    return "; ".join(parts) or "no checks reported yet"
