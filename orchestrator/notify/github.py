"""GitHub deployment statuses: each release is a GitHub deployment of its commit to the
pipeline's environment (production-{region} by default), whose status follows the release:
in_progress while it is built and gated and while it rolls out, success when live,
failure when halted, a breach or a rollback away from it, error when it failed.

The deployment id is kept in the store (notice_refs). Sends go through an Outbox, like
Slack's: retried on 429, rate-limit 403 and 5xx, recorded when they fail, and never in a
release's way. The token is read from the environment and never appears in a message.
"""

from __future__ import annotations

import time
from typing import Any

import requests

from orchestrator.config import GitHubDeployments, Pipeline
from orchestrator.notify import Notice
from orchestrator.notify.outbox import Outbox, Retry, retry_after
from orchestrator.store import Release, Store
from shiptypes import ProviderContext

NOTIFIER = "github"
API_VERSION = "2022-11-28"


class GitHubError(Exception):
    """GitHub refused for a reason a retry will not fix; never carries the token."""


class GitHubDeploymentNotifier:
    name = "github"

    def __init__(self, config: GitHubDeployments, pipeline: Pipeline, context: ProviderContext,
                 store: Store, outbox: Outbox | None = None) -> None:
        self.config = config
        self.pipeline = pipeline
        self.repo = config.repo or pipeline.repo.name
        self.store = store
        self._token = context.env.get(config.token_env, "")
        self.outbox = outbox or Outbox(NOTIFIER, store, config)

    def notify(self, notice: Notice) -> None:
        status = deployment_state(notice)
        if status is not None and notice.release_id is not None:
            self.outbox.put(notice.pipeline, notice.release_id, f"the {status} status",
                            lambda: self._post_status(notice, status))

    def flush(self, timeout: float) -> bool:
        return self.outbox.flush(timeout)

    def close(self, timeout: float = 10.0) -> bool:
        return self.outbox.close(timeout)

    def _post_status(self, notice: Notice, state: str) -> None:
        release = self.store.release(notice.release_id)  # type: ignore[arg-type]
        deployment = self._deployment(release)
        values = self.pipeline.link_values(release.number, release.sha,
                                           release.slug.id if release.slug else "")
        log_url = (self.config.log_url.format(**values) if self.config.log_url
                   else notice.links[0].url if notice.links else None)
        body: dict[str, Any] = {"state": state, "description": notice.text[:140],
                                "environment": self.config.environment.format(**values)}
        if log_url:
            body["log_url"] = log_url
        if self.config.environment_url:
            body["environment_url"] = self.config.environment_url.format(**values)
        self._request("POST", f"/repos/{self.repo}/deployments/{deployment}/statuses", body)

    def _deployment(self, release: Release) -> str:
        kept = self.store.notice_ref(release.id, NOTIFIER)
        if kept is not None:
            return kept.ref
        values = self.pipeline.link_values(release.number, release.sha)
        created = self._request("POST", f"/repos/{self.repo}/deployments", {
            "ref": release.sha, "environment": self.config.environment.format(**values),
            "description": f"{release.name}: {len(release.commits)} commit(s)"[:140],
            "auto_merge": False, "required_contexts": [], "production_environment": True,
            "payload": {"pipeline": release.pipeline, "release": release.number}})
        return self.store.keep_notice_ref(release.id, NOTIFIER, str(created["id"]),
                                          {"repo": self.repo}).ref

    def _request(self, method: str, path: str, body: dict[str, Any]) -> Any:
        if not self._token:
            raise GitHubError(f"{self.config.token_env} is not set: cannot post deployments")
        url = self.config.api_url.rstrip("/") + path
        headers = {"Authorization": f"Bearer {self._token}",
                   "Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION}
        try:
            answer = requests.request(method, url, json=body, headers=headers,
                                      timeout=self.config.request_timeout)
        except requests.RequestException as error:
            raise Retry(f"cannot reach GitHub ({type(error).__name__})") from None
        if answer.status_code in (200, 201):
            return answer.json()
        if answer.status_code == 429 or (answer.status_code == 403 and answer.headers.get(
                "x-ratelimit-remaining") == "0"):
            raise Retry(f"HTTP {answer.status_code} (rate limited)", _rate_wait(answer))
        if answer.status_code >= 500:
            raise Retry(f"HTTP {answer.status_code}")
        raise GitHubError(f"GitHub refused {method} {path} (HTTP {answer.status_code}): "
                          f"{_message(answer)}")


def deployment_state(notice: Notice) -> str | None:
    """The deployment status a notice means, or None when it changes nothing."""
    if notice.kind == "stage" and notice.state in ("building", "promoting"):
        return "in_progress"
    if notice.kind == "live":
        return "success"
    if notice.kind == "halted":
        return "error" if notice.state == "failed" else "failure"
    if notice.kind == "breach":
        return "failure"
    if notice.kind == "rollback" and notice.text.startswith("rolling back"):
        return "failure"  # the release being rolled back
    if notice.kind == "rollback" and notice.text.startswith("rolled back to"):
        return "success"  # the release rolled back to is what serves again
    return None


def _rate_wait(answer: requests.Response) -> float:
    waited = retry_after(answer.headers.get("Retry-After"))
    reset = answer.headers.get("x-ratelimit-reset")
    if not waited and reset and reset.isdigit():
        waited = max(0.0, int(reset) - time.time())
    return waited


def _message(answer: requests.Response) -> str:
    try:
        return str(answer.json().get("message", ""))[:300]
    except (ValueError, AttributeError):
        return ""
