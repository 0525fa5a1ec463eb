"""Vendors misbehaving during whole releases: Slack, PagerDuty, GitHub and Datadog (one
fake server, the real clients) answering 500, 429 with Retry-After, nothing within the
timeout, slowly, or with malformed JSON. Notifiers retry and record and the release goes on;
the CI gate fails closed; a heartbeat without data holds the next promotion. Nothing
crashes, and every fault shows in the events and in `ship status --json`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import cli
from orchestrator.reconcile import audit
from orchestrator.release import State
from orchestrator.runner import Runner
from orchestrator.store import Store
from tests.faults.vendors import NOTIFIERS, FakeVendors, failures_by_notifier, vendor_world
from tests.test_flows import deploy

pytestmark = pytest.mark.usefixtures("prefect_api")
FAILING = ("500", "timeout", "malformed")


@pytest.fixture
def vendors() -> Iterator[FakeVendors]:
    with FakeVendors() as fake:
        yield fake


def status_json(path: Path, store: Store, monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """What `ship status us --json` says."""
    monkeypatch.setenv("SHIP_DATABASE_URL", store.url)
    capsys.readouterr()
    assert cli.main(["--config", str(path), "status", "us", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def flushed(runner: Runner) -> None:
    """Let every notifier send or give up what it holds, waiting out its retries as a running
    server does, then close. close() alone tries once more and waits no longer (at shutdown
    nothing waits), so a send still pausing for a 429's Retry-After would be given up."""
    for name in runner.ship.running():
        for notifier in runner.ship.pipeline(name).broadcast.notifiers:
            outbox = getattr(notifier, "outbox", None)
            if outbox is not None:
                assert outbox.flush(30.0), f"{notifier.name} did not finish within 30 s"
    assert runner.ship.close_notifiers(30.0), "the notifiers did not finish within 30 s"


@pytest.mark.parametrize("fault", ["500", "429", "timeout", "slow", "malformed"])
def test_notifiers_in_trouble_never_stop_a_release_and_are_recorded(
        tmp_path: Path, vendors: FakeVendors, fault: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for name in NOTIFIERS:
        vendors.faults[name] = fault
    runner, store, path = vendor_world(tmp_path, vendors.url, breach=[2])
    first = deploy(runner, 1).release
    second = deploy(runner, 2).release  # breaches: a page, a rollback, a lock
    if fault == "timeout":  # every send waits out its timeout: the backlog is not waited for
        runner.ship.close_notifiers(2.0)
    else:
        flushed(runner)

    assert store.release(first.id).state == State.DONE
    assert store.release(second.id).state == State.ROLLED_BACK
    state = store.pipeline_state("us")
    assert state.live.id == first.id and state.lock.owner == "heartbeat"
    failed = failures_by_notifier(store)
    status = status_json(path, store, monkeypatch, capsys)
    # PagerDuty's answer is only its status code: a 200 with a broken body was accepted.
    failing = set()
    if fault in FAILING:
        failing = set(NOTIFIERS) - ({"pagerduty"} if fault == "malformed" else set())
        assert "notify_failed" in {a["kind"] for a in status["attention"]}
        assert cli.main(["--config", str(path), "status", "us"]) == 0
        assert "us notify_failed: " in capsys.readouterr().out  # the table says it too
    assert set(failed) == failing, failed  # each failing one retried, gave up, recorded
    if "pagerduty" in failing:
        assert any("breach" in m for m in failed["pagerduty"])  # the page that did not go
    else:
        pages = [r.json() for r in vendors.sent("pagerduty")]
        assert {p["dedup_key"] for p in pages} == {"ship-breach-us-2"}
    assert status["locked"] and status["live"] == first.number
    assert audit(store, "us") == []


@pytest.mark.parametrize("fault", ["timeout", "malformed", "429"])
def test_a_ci_gate_in_trouble_fails_closed(tmp_path: Path, vendors: FakeVendors, fault: str,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    vendors.faults["github_ci"] = fault
    runner, store, path = vendor_world(tmp_path, vendors.url, ci=True)
    release = store.release(deploy(runner, 1).release.id)
    flushed(runner)

    [ci] = [g for g in store.gate_results(release.id) if g.gate == "ci"]
    status = status_json(path, store, monkeypatch, capsys)
    if fault == "429":  # a rate limit waited out is no failure
        assert ci.passed and release.state == State.DONE
        return
    assert not ci.passed and ci.errored, ci
    assert "GitHub" in ci.summary
    assert (release.state, release.halted_by) == (State.HALTED, "gate")
    assert store.pipeline_state("us").live is None  # nothing reached the fleet
    assert [g["errored"] for g in status["last_release"]["gates"] if g["gate"] == "ci"] == [True]
    assert audit(store, "us") == []


@pytest.mark.parametrize("fault", ["500", "malformed", "429"])
def test_a_heartbeat_without_data_holds_the_next_promotion(
        tmp_path: Path, vendors: FakeVendors, fault: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    vendors.faults["datadog"] = fault
    runner, store, path = vendor_world(tmp_path, vendors.url, datadog=True)
    first = store.release(deploy(runner, 1).release.id)
    second = store.release(deploy(runner, 2).release.id)
    flushed(runner)

    assert vendors.calls["datadog"] > 2
    status = status_json(path, store, monkeypatch, capsys)
    if fault == "429":  # two rate-limited looks, then data: the hold came and went
        assert first.state == second.state == State.DONE
        assert [e.kind for e in store.events("us") if e.kind in ("hold", "unhold")] == [
            "hold", "unhold"]
        assert status["held"] is None
        return
    assert first.state == State.DONE and "watch ended blind" in first.reason
    assert (second.state, second.halted_by) == (State.HALTED, "hold")
    assert "heartbeat has no data" in status["held"]
    assert "hold" in {a["kind"] for a in status["attention"]}
    assert status["live"] == first.number
    assert audit(store, "us") == []
