"""Fixtures for the local fleet's tests: releases built as real tarball slugs, and fleets of
real agent and worker processes that are always stopped."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from orchestrator.tarball import TarballBuildConfig, TarballBuilder
from rollout.local import LocalFleet, LocalFleetConfig, fleet_processes
from shiptypes import FleetStatus, ProviderContext, ReleaseRef, RolloutSettings

APP = Path(__file__).resolve().parents[2] / "examples" / "app"
T = TypeVar("T")


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 120.0) -> T:
    """Poll until `check` answers something truthy; the deadline only guards against a hang."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = check()
        if answer:
            return answer
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def wait_done(fleet: LocalFleet, timeout: float = 120.0) -> FleetStatus:
    return wait_for(lambda: (status := fleet.observe()).done and status, "the fleet", timeout)


@pytest.fixture
def fleet_context(tmp_path: Path) -> ProviderContext:
    return ProviderContext(pipeline="test", region="local", state_dir=tmp_path / ".ship")


@pytest.fixture
def tarball_release(tmp_path: Path, fleet_context: ProviderContext) -> Callable[..., ReleaseRef]:
    """release(number, **release_json): a release with its slug built from examples/app."""

    def build(number: int, **release_json: Any) -> ReleaseRef:
        config = TarballBuildConfig(type="tarball", source=str(APP),
                                    store=str(tmp_path / "slugs"), release_json=release_json)
        ref = ReleaseRef(id=number, pipeline="test", number=number, sha=f"{number:040x}")
        return replace(ref, slug=TarballBuilder(config, fleet_context).build(ref))

    return build


@pytest.fixture
def local_fleet(fleet_context: ProviderContext) -> Iterator[Callable[..., LocalFleet]]:
    """fleet(hosts, workers, app=…, stagger=…, drain_timeout=…, keep_releases=…): started on a root
    of its own, and stopped after the test whatever happens, leaving no process behind."""
    started: list[LocalFleet] = []

    def start(hosts: int, workers: int, boot_timeout: float = 10.0,
              app: dict[str, Any] | None = None, **rollout: Any) -> LocalFleet:
        settings = RolloutSettings(**{"stagger": 0.3, "drain_timeout": 3.0, **rollout})
        settings = settings.running(app)
        root = fleet_context.state_dir / f"fleet-{len(started)}"
        config = LocalFleetConfig(driver="local", hosts=hosts, workers=workers, root=str(root),
                                  boot_timeout=boot_timeout, idle_grace=0.2)
        started.append(LocalFleet(config, settings, fleet_context))
        return started[-1]

    yield start
    for each in started:
        each.close()
    for each in started:
        assert fleet_processes(each.root) == [], f"processes left running at {each.root}"
