from __future__ import annotations

from collections.abc import Iterator

import pytest

from gates.ci import GitHubCIConfig, GitHubCIGate
from shiptypes import PreprodTarget, ProviderContext, ReleaseRef
from tests.fakehttp import FakeServer, Reply
from tests.gates.conftest import SECRETS, SHA, assert_no_secret

COMMIT = f"/repos/example/chat/commits/{SHA}"
TARGET = PreprodTarget("preprod-us", "http://127.0.0.1:9")


@pytest.fixture
def github() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


def gate(github: FakeServer, context: ProviderContext, **config: object) -> GitHubCIGate:
    settings = {"type": "github_ci", "repo": "example/chat", "api_url": github.url,
                "interval": 0.05, "max_interval": 0.1, "timeout": 5, "request_timeout": 2,
                **config}
    return GitHubCIGate(GitHubCIConfig.model_validate(settings), context)


def status(state: str, *statuses: dict) -> Reply:
    return Reply(json={"state": state, "sha": SHA, "statuses": list(statuses)})


def runs(*check_runs: dict) -> Reply:
    return Reply(json={"total_count": len(check_runs), "check_runs": list(check_runs)})


def run(name: str, status: str = "completed", conclusion: str | None = "success",
        id: int = 1) -> dict:
    return {"id": id, "name": name, "status": status, "conclusion": conclusion,
            "html_url": f"https://github.com/example/chat/runs/{name}"}


def test_pending_then_success_passes(github: FakeServer, context: ProviderContext,
                                     release: ReleaseRef) -> None:
    ctx = {"context": "ci/jenkins", "state": "pending", "target_url": "https://ci.example/1"}
    github.route("GET", f"{COMMIT}/status",
                 [status("pending", ctx), status("success", {**ctx, "state": "success"})])
    github.route("GET", f"{COMMIT}/check-runs",
                 [runs(run("build", "in_progress", None)), runs(run("build"))])
    result = gate(github, context).run(release, TARGET)
    assert result.passed and not result.errored, result
    assert result.summary == "CI passed at 0123456: 2 checks green"
    assert len(github.requests_to(f"{COMMIT}/status")) >= 2
    sent = github.requests[0].headers
    assert sent["authorization"] == f"Bearer {SECRETS['GITHUB_TOKEN']}"
    assert_no_secret(result)


def test_failure_names_the_failing_checks_with_links(github: FakeServer, context: ProviderContext,
                                                     release: ReleaseRef) -> None:
    github.route("GET", f"{COMMIT}/status", status(
        "failure", {"context": "deploy/preview", "state": "error",
                    "target_url": "https://ci.example/preview/9"},
        {"context": "ci/legacy", "state": "success", "target_url": None}))
    github.route("GET", f"{COMMIT}/check-runs", runs(
        run("build"), run("lint", conclusion="failure"), run("e2e", conclusion="cancelled"),
        run("flaky-perf", conclusion="failure"), run("slow", "in_progress", None)))
    result = gate(github, context, allow_failures=["flaky-*"]).run(release, TARGET)
    assert not result.passed and not result.errored
    assert result.summary == ("CI failed at 0123456: deploy/preview (error), lint (failure), "
                              "e2e (cancelled)")
    assert {(k.title, k.url) for k in result.links} == {
        ("deploy/preview", "https://ci.example/preview/9"),
        ("lint", "https://github.com/example/chat/runs/lint"),
        ("e2e", "https://github.com/example/chat/runs/e2e")}


def test_a_rerun_replaces_the_failed_run_of_the_same_name(
        github: FakeServer, context: ProviderContext, release: ReleaseRef) -> None:
    github.route("GET", f"{COMMIT}/status", status("pending"))
    github.route("GET", f"{COMMIT}/check-runs",
                 runs(run("build", conclusion="failure", id=1), run("build", id=2)))
    result = gate(github, context).run(release, TARGET)
    assert result.passed, result


def test_allowed_failures_alone_pass(github: FakeServer, context: ProviderContext,
                                     release: ReleaseRef) -> None:
    github.route("GET", f"{COMMIT}/status", status("pending"))
    github.route("GET", f"{COMMIT}/check-runs",
                 runs(run("build"), run("coverage", conclusion="timed_out")))
    result = gate(github, context, allow_failures=["coverage"]).run(release, TARGET)
    assert result.passed
    assert "1 allowed to fail" in result.summary


def test_a_required_check_never_reported_times_out(github: FakeServer, context: ProviderContext,
                                                   release: ReleaseRef) -> None:
    github.route("GET", f"{COMMIT}/status", status("pending"))
    github.route("GET", f"{COMMIT}/check-runs", runs(run("build")))
    result = gate(github, context, require=["e2e"], timeout=0.4).run(release, TARGET)
    assert not result.passed and result.errored
    assert "did not finish within 0.4s" in result.summary
    assert "required but not reported: e2e" in result.summary


def test_a_required_check_cannot_be_allowed_to_fail(
        github: FakeServer, context: ProviderContext, release: ReleaseRef) -> None:
    github.route("GET", f"{COMMIT}/status", status("pending"))
    github.route("GET", f"{COMMIT}/check-runs", runs(run("e2e", conclusion="failure")))
    result = gate(github, context, require=["e2e"], allow_failures=["*"]).run(release, TARGET)
    assert not result.passed and not result.errored
    assert "e2e (failure)" in result.summary


def test_checks_on_a_second_page_count(github: FakeServer, context: ProviderContext,
                                       release: ReleaseRef) -> None:
    github.route("GET", f"{COMMIT}/status", status("pending"))
    github.route("GET", f"{COMMIT}/check-runs", lambda request: (
        runs(run("lint", conclusion="failure")) if request.query.get("page") == ["2"] else
        Reply(json={"total_count": 2, "check_runs": [run("build")]},
              headers={"Link": f'<{github.url}{COMMIT}/check-runs?page=2>; rel="next"'})))
    result = gate(github, context).run(release, TARGET)
    assert not result.passed
    assert "lint (failure)" in result.summary


@pytest.mark.parametrize(("reply", "why", "calls"), [
    (Reply(status=403, json={"message": "Bad credentials"}), "GitHub credentials refused "
     "(HTTP 403)", 1),
    (Reply(status=401, json={"message": "Bad credentials"}), "credentials refused (HTTP 401)", 1),
    (Reply(status=404, json={"message": "Not Found"}), "refused the request (HTTP 404)", 1),
    (Reply(status=500, body="oops"), "GitHub is failing (HTTP 500)", 3),
    (Reply(body="<html>not json</html>"), "malformed answer (not JSON)", 1),
    (Reply(json={"state": "success"}), "malformed answer: no list of statuses", 1),
    (Reply(json=["a list"]), "malformed answer: no list of statuses", 1),
    (Reply(json={"state": "x", "statuses": [{"state": "success"}]}),
     "malformed answer: a commit status has no context or state", 1),
    (Reply(json={}, delay=1.5), "GitHub did not answer within 0.3s", 3),
])
def test_bad_answers_fail_closed(github: FakeServer, context: ProviderContext,
                                 release: ReleaseRef, reply: Reply, why: str, calls: int) -> None:
    github.route("GET", f"{COMMIT}/status", reply)
    github.route("GET", f"{COMMIT}/check-runs", runs(run("build")))
    result = gate(github, context, max_errors=2, request_timeout=0.3).run(release, TARGET)
    assert not result.passed and result.errored
    assert why in result.summary
    assert len(github.requests_to(f"{COMMIT}/status")) == calls
    assert_no_secret(result)


def test_a_passing_blip_of_5xx_is_tolerated(github: FakeServer, context: ProviderContext,
                                            release: ReleaseRef) -> None:
    github.route("GET", f"{COMMIT}/status", [Reply(status=502), status("success")])
    github.route("GET", f"{COMMIT}/check-runs", runs(run("build")))
    result = gate(github, context).run(release, TARGET)
    assert result.passed, result


def test_no_token_errors_without_calling(github: FakeServer, release: ReleaseRef,
                                         context: ProviderContext) -> None:
    bare = ProviderContext("us", "us-east-1", clock=context.clock, env={})
    result = gate(github, bare).run(release, TARGET)
    assert result.errored and "GITHUB_TOKEN is not set" in result.summary
    assert github.requests == []
