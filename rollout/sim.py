"""A simulated fleet: thousands of in-process hosts with timing distributions and failure
injection. Publishing draws every host's timeline once; observing is a few binary searches,
so the orchestrator's work per observation does not grow with the fleet.

The default timings follow the published fleet with `stagger: 2m`: the first new request
about 2 minutes after promotion, half the fleet in about 4.5 minutes, 95% in under 6.

A release published while an older one is still rolling out overtakes it: a host still
waiting out its stagger starts the newer release at the moment it would have started the
older one (its agent fetched the newer slug while it waited); a host already on the older
release restarts again after a fresh stagger."""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, TypeVar

from pydantic import Field

from shiptypes import (
    FleetStatus,
    HostFailure,
    ProviderConfig,
    ProviderContext,
    ReleaseNumber,
    ReleaseRef,
    RolloutSettings,
    Seconds,
    Seed,
)

LISTED_FAILURES = 20  # an observation names this many failed hosts at most
T = TypeVar("T")


class SimFleetConfig(ProviderConfig):
    driver: Literal["sim"]
    hosts: int = Field(300, ge=1, le=1_000_000)
    workers: int = Field(4, ge=1, le=1000,
                         description="processes per host, restarted one at a time")
    fetch: Seconds = Field(130.0, description="time for a host to notice and unpack a new slug")
    worker_boot: Seconds = Field(15.0, description="time for a replacement worker to be healthy")
    drain: Seconds = Field(5.0, description="typical drain of a worker's in-flight requests")
    jitter: float = Field(0.2, ge=0, le=1, description="relative spread of every duration")
    fail_releases: list[ReleaseNumber] = Field(default_factory=list,
                                               description="releases that fail to boot")
    fail_share: float = Field(1.0, ge=0, le=1, description="share of hosts failing those releases")
    seed: Seed | None = None

    def for_slot(self, slot: int) -> SimFleetConfig:
        """The pre-prod of release slot `slot` (`train.in_flight`): its own timings."""
        if not slot or self.seed is None:
            return self
        return self.model_copy(update={"seed": self.seed + slot})


@dataclass(frozen=True)
class _Rollout:
    """One release's timeline, in seconds after publish; everything observe needs besides
    the elapsed time is computed here once."""

    release: int
    published_at: datetime
    hosts: int
    starts: list[float]  # sorted
    by_host: list[float]  # each host's start, in host order
    converges: list[float]  # of hosts that succeed, sorted
    failures: list[float]  # of hosts that fail, sorted
    first_request: float | None
    last: float  # when the last host converged or failed
    half: float | None
    p95: float | None


class SimFleet:
    """Implements FleetDriver for `driver: sim`."""

    def __init__(self, config: SimFleetConfig, rollout: RolloutSettings,
                 context: ProviderContext) -> None:
        self.config = config
        self.rollout = rollout
        self._clock = context.clock
        self._random = random.Random(config.seed)
        self._kept: list[int] = []  # releases on disk, newest last
        self._current: _Rollout | None = None
        self._waves: list[_Rollout] = []  # rollouts some host may not have started yet
        self._settled: int | None = None  # the newest release every host runs or passed

    def publish(self, release: ReleaseRef) -> None:
        cfg = self.config
        kept = release.number in self._kept
        failing = release.number in cfg.fail_releases
        draw, stagger = self._random.random, self.rollout.stagger
        fetch = self._spread(0.0 if kept else cfg.fetch)
        worker = self._spread(cfg.drain), self._spread(cfg.worker_boot)
        boot = self._spread(cfg.worker_boot)
        waiting = self._waiting() if self._overtakes(release) else []
        starts, converges, failures, firsts = [], [], [], []
        for host in range(cfg.hosts):
            start = waiting[host] if waiting and waiting[host] is not None \
                else fetch() + draw() * stagger
            starts.append(start)
            if failing and draw() < cfg.fail_share:
                failures.append(start + boot() * 2)
                continue
            first = start + sum(d() for d in worker)
            firsts.append(first)
            converges.append(first + sum(d() for _ in range(cfg.workers - 1) for d in worker))
        by_host = list(starts)
        for times in (starts, converges, failures):
            times.sort()
        self._current = _Rollout(
            release.number, self._clock.now(), cfg.hosts, starts, by_host, converges, failures,
            first_request=min(firsts, default=None),
            last=max(converges[-1:] + failures[-1:], default=0.0),
            half=quantile(converges, 0.5, cfg.hosts),
            p95=quantile(converges, 0.95, cfg.hosts),
        )
        if not failing:
            self._keep(release.number)
        self._settled = self._floor()
        self._waves = [*self._unsettled(), self._current]

    def _overtakes(self, release: ReleaseRef) -> bool:
        """A newer release overtakes the one rolling out; an older one (a rollback or a
        revert) starts afresh, from the copy hosts keep."""
        return self._current is not None and release.number > self._current.release

    def _waiting(self) -> list[float | None]:
        """For each host, the seconds until it starts the current rollout, None if it has."""
        run = self._current
        if run is None:
            return []
        elapsed = (self._clock.now() - run.published_at).total_seconds()
        return [start - elapsed if start > elapsed else None for start in run.by_host]

    def _unsettled(self) -> list[_Rollout]:
        """The rollouts not yet started on every host, oldest first: a host that had not
        started one when a newer one came starts the newer at the same moment, so each
        keeps the time at which every host runs it or a newer release."""
        now = self._clock.now()
        return [run for run in self._waves if not _settled(run, now)]

    def _floor(self) -> int | None:
        """The newest release that every host has started, or overtaken by a newer one."""
        now = self._clock.now()
        return next((run.release for run in reversed(self._waves) if _settled(run, now)),
                    self._settled)

    def observe(self) -> FleetStatus:
        run = self._current
        if run is None:
            return FleetStatus(release=None, hosts=self.config.hosts, started=0, converged=0,
                               failed=0)
        elapsed = (self._clock.now() - run.published_at).total_seconds()
        failed = bisect_right(run.failures, elapsed)
        return FleetStatus(
            release=run.release,
            hosts=run.hosts,
            started=bisect_right(run.starts, elapsed) - failed,
            converged=bisect_right(run.converges, elapsed),
            failed=failed,
            failures=tuple(HostFailure(f"sim-{i:05d}", "replacement worker never became healthy")
                           for i in range(min(failed, LISTED_FAILURES))),
            first_request_at=self._at(run, run.first_request, elapsed),
            all_started_at=self._at(run, run.starts[-1], elapsed),
            converged_at=self._at(run, run.last, elapsed),
            half_at=self._at(run, run.half, elapsed),
            p95_at=self._at(run, run.p95, elapsed),
            floor=self._floor(),
        )

    def _spread(self, seconds: float) -> Callable[[], float]:
        """A sampler of `seconds` spread evenly by ±jitter: bounded, so the first host of
        a large fleet is no faster than the fastest host can really be."""
        low = seconds * (1 - self.config.jitter)
        width = seconds * 2 * self.config.jitter
        draw = self._random.random
        return lambda: low + width * draw()

    def _keep(self, number: int) -> None:
        if number in self._kept:
            self._kept.remove(number)
        self._kept = [*self._kept, number][-self.rollout.keep_releases:]

    @staticmethod
    def _at(run: _Rollout, offset: float | None, elapsed: float) -> datetime | None:
        if offset is None or offset > elapsed:
            return None
        return run.published_at + timedelta(seconds=offset)


def _settled(run: _Rollout, now: datetime) -> bool:
    return run.published_at + timedelta(seconds=run.starts[-1]) <= now


def quantile(sorted_times: Sequence[T], share: float, hosts: int) -> T | None:
    """When `share` of all hosts had converged, or None if that many never will."""
    index = max(0, int(share * hosts + 0.999999) - 1)
    return sorted_times[index] if index < len(sorted_times) else None
