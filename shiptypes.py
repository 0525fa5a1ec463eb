"""The shared vocabulary of ship: release references, slugs, results, clocks, and the
protocols of the plug points that live below the orchestrator (Gate, FleetDriver,
MetricSource).

Everything here is small and dependency-free apart from pydantic, so that `gates`,
`rollout` and `heartbeat` can import it without importing each other or `orchestrator`.
"""

from __future__ import annotations

import asyncio
import math
import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- time -------------------------------------------------------------------------------


class Clock(Protocol):
    """Pipeline time. Every duration in pipelines.yaml is in pipeline seconds; a scaled
    clock lets the demo and the benches run a workday in minutes."""

    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...

    async def wait(self, seconds: float) -> None: ...


class WallClock:
    """Real time: one pipeline second is one second."""

    speed = 1.0

    def now(self) -> datetime:
        return utcnow()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    async def wait(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Pipeline time running `speed` times faster than real time, from `origin`."""

    def __init__(self, speed: float, origin: datetime | None = None) -> None:
        if speed <= 0:
            raise ValueError("clock speed must be positive")
        self.speed = speed
        self._origin = origin or utcnow()
        self._start = time.monotonic()

    def now(self) -> datetime:
        return self._origin + timedelta(seconds=(time.monotonic() - self._start) * self.speed)

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds) / self.speed)

    async def wait(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_seconds(value: object) -> float:
    """A duration: a number of seconds, or a string such as "90s", "4m", "1.5h"."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '4m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        unit = next((u for u in ("ms", "s", "m", "h", "d") if text.endswith(u)), None)
        number = text[: -len(unit)] if unit else text
        try:
            seconds = float(number) * _UNITS[unit or "s"]
        except ValueError:
            raise ValueError(
                f"{value!r} is not a duration: use seconds or a number with ms, s, m, h or d"
            ) from None
    else:
        raise ValueError("a duration is a number of seconds or a string like '4m'")
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a finite duration")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{value!r} is longer than a year, the longest duration ship accepts")
    return seconds


# Bounded, so that no wait is endless and no deadline overflows a date.
MAX_SECONDS = 365 * 86400.0
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS), BeforeValidator(parse_seconds)]
ReleaseNumber = Annotated[int, Field(ge=1, le=2**31 - 1)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


def check_placeholders(template: str, known: frozenset[str]) -> str:
    """For config validators: `template` may use only the `known` {placeholders}, so a
    misspelt one is an error at load time rather than a broken command or link later."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as error:
        raise ValueError(f"{template!r} is not a template: {error}") from None
    unknown = fields - known
    if unknown:
        raise ValueError(f"unknown placeholder(s) {sorted(unknown)}; known: {sorted(known)}")
    return template


# --- releases and slugs -------------------------------------------------------------------


@dataclass(frozen=True)
class Commit:
    sha: str
    author: str = ""
    message: str = ""
    merged_at: datetime | None = None


@dataclass(frozen=True)
class Slug:
    """An immutable, content-addressed release artifact: `id` is derived from its bytes.
    `build` is what a builder says of how it was made (sha, command, duration, log, cached)."""

    id: str
    uri: str
    size: int = 0
    build: Mapping[str, Any] | None = field(default=None, compare=False)


class BuildFailed(Exception):
    """The release's slug could not be built: a one-line reason, and the last lines of the
    build's log when there is one."""

    def __init__(self, reason: str, log_tail: str = "") -> None:
        super().__init__(reason)
        self.log_tail = log_tail


@dataclass(frozen=True)
class ReleaseRef:
    """What the plug points see of a release: enough to build, gate, ship and watch it."""

    id: int
    pipeline: str
    number: int
    sha: str
    slug: Slug | None = None
    commits: tuple[Commit, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.pipeline}#{self.number}"


@dataclass(frozen=True)
class Link:
    title: str
    url: str


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate. `passed` is False for a failure *and* for an error: gates
    fail closed."""

    gate: str
    passed: bool
    summary: str
    links: tuple[Link, ...] = ()
    duration_s: float = 0.0
    output_tail: str = ""
    errored: bool = False


@dataclass(frozen=True)
class PreprodTarget:
    """Where the gates point: the pre-production deployment of the release."""

    name: str
    base_url: str | None = None


# --- plug points ----------------------------------------------------------------------------


class ProviderConfig(BaseModel):
    """Base of every provider's config block: a typo is an error, never silently ignored."""

    # NaN and infinity pass every bound (NaN compares false), then hang or overflow a wait.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class RolloutSettings(ProviderConfig):
    """How a fleet takes a release: every host waits a random delay in [0, stagger) before
    its rolling restart; each worker gets `drain_timeout` to finish in-flight requests."""

    stagger: Seconds = 60.0
    drain_timeout: Seconds = 30.0
    keep_releases: int = Field(5, ge=1, le=100, description="releases kept on each host for "
                               "rollback")
    max_failed_share: float = Field(
        0.05, ge=0, le=1, description="halt and revert when more hosts than this share fail"
    )
    # The pipeline's `app:` as the host agent takes it (rollout.agent.AppSpec), set by the
    # pipeline, never from `rollout:`. None: hosts run the example app's own protocol.
    _app: dict[str, Any] | None = PrivateAttr(None)

    @property
    def app(self) -> dict[str, Any] | None:
        return self._app

    def running(self, app: dict[str, Any] | None) -> RolloutSettings:
        """These settings, for a fleet that runs `app`."""
        copy = self.model_copy()
        copy._app = app
        return copy


@dataclass(frozen=True)
class ProviderContext:
    """What a provider may know of the world it runs in. `env` carries secrets; providers
    read them from here, never from config."""

    pipeline: str
    region: str
    clock: Clock = field(default_factory=WallClock)
    env: Mapping[str, str] = field(default_factory=dict)
    state_dir: Path = Path(".ship")
    # Which release number was serving at a moment: lets simulated outcome metrics react
    # to what is live without the heartbeat knowing the fleet.
    serving_at: Callable[[datetime], int | None] = lambda _when: None


@runtime_checkable
class Gate(Protocol):
    name: str

    def run(self, release: ReleaseRef, target: PreprodTarget) -> GateResult: ...


@dataclass(frozen=True)
class HostFailure:
    host: str
    reason: str


@dataclass(frozen=True)
class FleetStatus:
    """One observation of the fleet converging on `release`. Counts, not host lists, so an
    observation of 10,000 hosts stays small; `failures` lists the failed hosts."""

    release: int | None
    hosts: int
    started: int
    converged: int
    failed: int
    failures: tuple[HostFailure, ...] = ()
    first_request_at: datetime | None = None
    all_started_at: datetime | None = None
    converged_at: datetime | None = None
    # Pipeline times when 50% and 95% of hosts had converged.
    half_at: datetime | None = None
    p95_at: datetime | None = None
    # The oldest release a host may still run: every host has started `floor` or a newer
    # release. It lets a release overtaken mid-rollout by a newer one know when its commits
    # are on every host. None: the driver cannot tell.
    floor: int | None = None

    @property
    def all_started(self) -> bool:
        return self.started + self.failed >= self.hosts

    @property
    def done(self) -> bool:
        return self.converged + self.failed >= self.hosts


@runtime_checkable
class FleetDriver(Protocol):
    """Publishes a desired release to every host at once; hosts converge on their own."""

    def publish(self, release: ReleaseRef) -> None: ...

    def observe(self) -> FleetStatus: ...


@dataclass(frozen=True)
class Point:
    at: datetime
    value: float


@dataclass(frozen=True)
class Series:
    """A metric series. `error` set means "no data": never to be read as healthy."""

    points: tuple[Point, ...] = ()
    error: str | None = None

    @property
    def no_data(self) -> bool:
        return self.error is not None or not self.points


@runtime_checkable
class MetricSource(Protocol):
    def fetch(self, query: str, start: datetime, end: datetime, step_s: float) -> Series: ...


def draw(key: str, seed: int | None) -> str:
    """The seed of a simulated provider's random draw for a release: the same release always
    draws the same, and another `seed` picks other releases."""
    return key if seed is None else f"{key}/{seed}"
