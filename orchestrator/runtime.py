"""The running world of each pipeline: its config, the store, the clock, and the providers
built from config (builder, CI, gates, pre-prod and production fleets, heartbeat source,
notifiers). Flows look their pipeline up here by name, so flow parameters stay plain values
that Prefect can record.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from gates import GATES
from heartbeat import SOURCES
from orchestrator import config as config_module
from orchestrator.config import Pipeline, ShipConfig
from orchestrator.notify import Notice, Notifier
from orchestrator.notify.console import ConsoleNotifier
from orchestrator.slugs import BUILDERS, Builder
from orchestrator.store import Release, Store
from rollout import DRIVERS
from shiptypes import (
    Clock,
    FleetDriver,
    FleetStatus,
    Gate,
    Link,
    MetricSource,
    PreprodTarget,
    ProviderContext,
    WallClock,
)


class Broadcast:
    """Hands a notice to every notifier. A notifier that fails is recorded in the event log
    and never fails the release."""

    def __init__(self, notifiers: Iterable[Notifier], store: Store) -> None:
        self.notifiers = list(notifiers)
        self.store = store

    def notify(self, notice: Notice) -> None:
        for notifier in self.notifiers:
            try:
                notifier.notify(notice)
            except Exception as error:
                self.store.event(notice.pipeline, "notify_failed",
                                 f"{notifier.name} could not send {notice.kind}: "
                                 f"{type(error).__name__}: {error}",
                                 release_id=notice.release_id)


ProgressHook = Callable[[Release, str, FleetStatus], None]


@dataclass
class PipelineRuntime:
    config: Pipeline
    store: Store
    clock: Clock
    builder: Builder
    ci: Gate | None
    gates: list[Gate]
    preprod: FleetDriver
    fleet: FleetDriver
    source: MetricSource
    broadcast: Broadcast
    poll_s: float = 5.0  # pipeline seconds between fleet observations
    watches: set[asyncio.Task] = field(default_factory=set)
    progress: list[ProgressHook] = field(default_factory=list)
    # Makes the pre-prod of slot 1, 2, … (`train.in_flight` above 1) on first use.
    preprod_maker: Callable[[int], FleetDriver] | None = None
    more_preprods: dict[int, FleetDriver] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name

    def preprod_for(self, release: Release) -> FleetDriver:
        """The release's own pre-prod: slot 0 is `preprod`, others are made when needed."""
        slot = release.preprod_slot
        if slot == 0 or self.preprod_maker is None:
            return self.preprod
        if slot not in self.more_preprods:
            self.more_preprods[slot] = self.preprod_maker(slot)
        return self.more_preprods[slot]

    def preprod_target(self, slot: int) -> PreprodTarget:
        name = self.config.preprod.name
        return PreprodTarget(name if slot == 0 else f"{name}-{slot}",
                             self.config.preprod_url(slot))

    def links(self, release: Release) -> tuple[Link, ...]:
        values = self.config.link_values(release.number, release.sha,
                                         release.slug.id if release.slug else "")
        return tuple(Link(title, template.format(**values))
                     for title, template in self.config.notify.links.items())

    def notify(self, kind: str, text: str, release: Release | None = None,
               level: str = "info", actor: str = "ship",
               links: tuple[Link, ...] | None = None, **extra: object) -> None:
        notice = Notice(
            pipeline=self.name, kind=kind, text=text, level=level,  # type: ignore[arg-type]
            release_id=release.id if release else None,
            release_number=release.number if release else None,
            state=release.state.value if release else None,
            sha=release.sha if release else None,
            authors=tuple(sorted({c.author for c in release.commits if c.author}))
            if release else (),
            links=links if links is not None else self.links(release) if release else (),
            actor=actor, **extra)  # type: ignore[arg-type]
        self.broadcast.notify(notice)

    def report_progress(self, release: Release, phase: str, status: FleetStatus) -> None:
        for hook in self.progress:
            hook(release, phase, status)


class Ship:
    """Every pipeline of one pipelines.yaml, sharing a store and a clock."""

    def __init__(self, config: ShipConfig, store: Store, clock: Clock | None = None,
                 notifiers: Iterable[Notifier] | None = None,
                 env: dict[str, str] | None = None, state_dir: Path = Path(".ship")) -> None:
        self.config = config
        self.store = store
        self.clock = clock or store.clock
        self.env = dict(os.environ if env is None else env)
        self.state_dir = state_dir
        self._notifiers = list(notifiers) if notifiers is not None else None
        self._pipelines: dict[str, PipelineRuntime] = {}
        self._serving_cache: dict[str, tuple[datetime | None, list]] = {}

    def pipeline(self, name: str) -> PipelineRuntime:
        if name not in self._pipelines:
            self._pipelines[name] = self._build(self.config.pipeline(name))
        return self._pipelines[name]

    def running(self) -> list[str]:
        """The pipelines this process has built a runtime for."""
        return list(self._pipelines)

    def close_providers(self, stop_hosts: bool = False) -> None:
        """Stop what providers started in this process: a local heartbeat source's sampler.
        A local fleet's hosts keep serving (hosts outlive their orchestrator; the next ship
        process adopts them) unless `stop_hosts`. Simulated and remote providers have
        nothing to stop."""
        for runtime in self._pipelines.values():
            for part in (runtime.fleet, runtime.preprod, *runtime.more_preprods.values(),
                         runtime.source):
                detach = None if stop_hosts else getattr(part, "detach", None)
                stop = detach or getattr(part, "close", None) or getattr(part, "stop", None)
                if callable(stop):
                    stop()

    def _build(self, pipeline: Pipeline) -> PipelineRuntime:
        context = ProviderContext(pipeline=pipeline.name, region=pipeline.region,
                                  clock=self.clock, env=self.env,
                                  state_dir=self.state_dir / pipeline.name,
                                  serving_at=lambda when: self.serving_at(pipeline.name, when))

        def make(registry: dict[type, type], cfg: object, *args: object) -> object:
            return registry[type(cfg)](cfg, *args, context)

        notifiers = (self._notifiers if self._notifiers is not None
                     else self._configured(pipeline, context))
        runtime = PipelineRuntime(
            config=pipeline, store=self.store, clock=self.clock,
            builder=make(BUILDERS, pipeline.build),  # type: ignore[arg-type]
            ci=make(GATES, pipeline.ci) if pipeline.ci else None,  # type: ignore[arg-type]
            gates=[make(GATES, g) for g in pipeline.gates],  # type: ignore[misc]
            preprod=self._preprod(pipeline, make, 0),
            preprod_maker=lambda slot: self._preprod(pipeline, make, slot),
            fleet=make(DRIVERS, pipeline.fleet, pipeline.fleet_rollout),  # type: ignore[arg-type]
            source=make(SOURCES, pipeline.heartbeat.source),  # type: ignore[arg-type]
            broadcast=Broadcast(notifiers, self.store),
            poll_s=min(5.0, pipeline.heartbeat.window),
        )
        # A sampling source (e.g. `local`) needs history before the first release's watch
        # asks for its baseline: start it with the pipeline.
        start = getattr(runtime.source, "start", None)
        if callable(start):
            start()
        return runtime

    @staticmethod
    def _preprod(pipeline: Pipeline, make: Callable[..., object], slot: int) -> FleetDriver:
        """Pre-prod number `slot`: hosts of its own, as the driver's config says."""
        fleet = pipeline.preprod.fleet.for_slot(slot)
        # Pre-prod is a host or two: staggering it would only make every release wait.
        return make(DRIVERS, fleet,  # type: ignore[return-value]
                    pipeline.fleet_rollout.model_copy(update={"stagger": 0.0}))

    def _configured(self, pipeline: Pipeline, context: ProviderContext) -> list[Notifier]:
        """The notifiers pipelines.yaml asks for. Those that talk to a vendor send from a
        background outbox, so a slow or failing vendor never holds up a release."""
        notify = pipeline.notify
        notifiers: list[Notifier] = [ConsoleNotifier()] if notify.console else []
        if notify.slack is not None:
            from orchestrator.notify.slack import SlackNotifier

            notifiers.append(SlackNotifier(notify.slack, context, self.store))
        if notify.pagerduty is not None:
            from orchestrator.notify.outbox import Once, Outbox, Queued
            from orchestrator.notify.pagerduty import PagerDutyNotifier

            pager = PagerDutyNotifier(notify.pagerduty, context)
            notifiers.append(Queued(pager, Outbox(pager.name, self.store, Once())))
        if notify.github is not None:
            from orchestrator.notify.github import GitHubDeploymentNotifier

            notifiers.append(GitHubDeploymentNotifier(notify.github, pipeline, context,
                                                      self.store))
        return notifiers

    def close_notifiers(self, timeout: float = 10.0) -> bool:
        """Send what the notifiers still hold, within `timeout` in all. False if some was
        left unsent."""
        deadline = time.monotonic() + timeout
        sent = True
        for runtime in self._pipelines.values():
            for notifier in runtime.broadcast.notifiers:
                close = getattr(notifier, "close", None)
                if close is not None:
                    sent = close(max(0.1, deadline - time.monotonic())) and sent
        return sent

    def serving_at(self, pipeline: str, when: datetime) -> int | None:
        """The release number the fleet served at `when`, from the live history (simulated
        metrics ask once per point). A history read at pipeline time T holds every entry
        since before T (entries are recorded at the pipeline time they begin), so it answers
        for any earlier moment, however fast or slow the clock runs."""
        read_at, history = self._serving_cache.get(pipeline, (None, []))
        if read_at is None or when >= read_at:
            read_at = self.clock.now()
            history = self.store.live_history(pipeline)
            self._serving_cache[pipeline] = (read_at, history)
        serving = [entry.number for entry in history if entry.since <= when]
        return serving[-1] if serving else None


_current: Ship | None = None


def use(ship: Ship) -> Ship:
    """Make `ship` the world that flows in this process run against."""
    global _current
    _current = ship
    return ship


def current() -> Ship:
    """The world flows run against: the one set with use(), else one built from the
    environment (SHIP_CONFIG, SHIP_DATABASE_URL), as on a Prefect worker."""
    global _current
    if _current is None:
        loaded = config_module.load(os.environ.get("SHIP_CONFIG", "pipelines.yaml"))
        _current = Ship(loaded, Store(clock=WallClock()))
    return _current
