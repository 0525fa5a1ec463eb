"""`ship demo`: the whole story on the simulated pipelines of pipelines.yaml, in scaled time.

Release 1 ships and is watched clean; release 2 fails a gate and halts; release 3 ships,
breaks the heartbeat, is rolled back automatically to the release live `lookback` minutes
earlier, and the pipeline locks; a deploy while locked is refused with the lock's reason;
unlock; release 4 ships. The other regions ship on their own beside it.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Awaitable
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from orchestrator import config as config_module
from orchestrator import dora, report
from orchestrator.config import Pipeline, ShipConfig
from orchestrator.notify.console import ConsoleNotifier
from orchestrator.release import State
from orchestrator.runner import DeployOutcome, Runner
from orchestrator.runtime import Ship, use
from orchestrator.show import line
from orchestrator.store import Release, Store
from shiptypes import Commit, FleetStatus, ScaledClock

DEMO_DIR = Path(".ship/demo")


def with_story_faults(loaded: ShipConfig, pipeline: str) -> ShipConfig:
    """The story's trouble, injected into the simulated providers in memory: the last gate
    fails release 2, and release 3 breaks the heartbeat."""
    story = loaded.pipeline(pipeline)
    if not story.gates or story.gates[-1].type != "sim" or story.heartbeat.source.type != "sim":
        raise config_module.ConfigError([config_module.Problem(
            "pipelines.yaml", None, f"pipelines.{pipeline}",
            "the demo needs simulated gates and a simulated heartbeat source")])
    gates = [*story.gates[:-1], story.gates[-1].model_copy(update={"fail_releases": [2]})]
    source = story.heartbeat.source.model_copy(update={"breach_releases": [3]})
    story = story.model_copy(update={
        "gates": gates, "heartbeat": story.heartbeat.model_copy(update={"source": source})})
    return loaded.model_copy(update={"pipelines": {**loaded.pipelines, pipeline: story}})


class DemoView:
    """The live picture: a stage table of every release and a progress bar per fleet."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pipelines: list[str] = []
        # Descriptions name releases: shown as they are, not read as markup.
        self.fleets = Progress(TextColumn("{task.description:<28}", markup=False),
                               BarColumn(bar_width=40),
                               MofNCompleteColumn(), TextColumn("hosts"))
        self._bars: dict[str, int] = {}

    def on_progress(self, release: Release, phase: str, status: FleetStatus) -> None:
        done = status.started + status.failed if phase == "starting" else status.converged
        label = f"{release.name} {phase}"
        bar = self._bars.get(release.pipeline)
        if bar is None:
            self._bars[release.pipeline] = self.fleets.add_task(label, total=status.hosts,
                                                                completed=done)
        else:
            self.fleets.update(bar, description=label, total=status.hosts, completed=done)

    def __rich__(self) -> Group:
        releases = sorted((r for p in self.pipelines for r in self.store.releases(p, limit=6)),
                          key=lambda r: r.created_at)[-10:]
        return Group(report.releases_table(self.store, releases, title="Releases (live)"),
                     Panel(self.fleets, title="Fleets", title_align="left"))


def run_demo(config_path: Path, pipeline: str, speed: float, console: Console) -> int:
    loaded = with_story_faults(config_module.load(config_path), pipeline)
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    clock = ScaledClock(speed)
    store = Store(f"sqlite:///{DEMO_DIR.resolve()}/ship.db", clock)
    ship = use(Ship(loaded, store, clock, notifiers=[ConsoleNotifier(console)]))
    view = DemoView(store)
    view.pipelines = list(loaded.pipelines)
    for name in loaded.pipelines:
        ship.pipeline(name).progress.append(view.on_progress)
    story = loaded.pipeline(pipeline)
    console.rule(f"ship demo · {len(loaded.pipelines)} pipelines · time ×{speed:g} "
                 f"(1 real second = {speed / 60:.1f} pipeline minutes)")
    console.print(line("Starting Prefect's local API (a few seconds on first run)… the story "
                       "runs on ", (pipeline, "bold"), f" ({story.region})"))
    with Live(view, console=console, refresh_per_second=4, transient=True):
        outcomes = asyncio.run(_story(Runner(ship), story, [p for p in loaded.pipelines
                                                            if p != pipeline], console))
    return _summary(store, loaded, outcomes, console)


async def _story(runner: Runner, story: Pipeline, others: list[str],
                 console: Console) -> dict[str, DeployOutcome]:
    name = story.name

    def chapter(text: str) -> None:
        console.print(line("\n", (f"▶ {text}", "bold magenta")))

    async def deploy(pipeline: str, author: str, message: str) -> DeployOutcome:
        return await runner.deploy(pipeline, [_commit(runner, pipeline, author, message)],
                                   author)

    chapter("Release 1 ships, and its heartbeat is watched clean "
            f"(the other regions ship beside it: {', '.join(others) or 'none'})")
    elsewhere = [asyncio.create_task(deploy(other, "erin", "tune the push fan-out"))
                 for other in others]
    outcomes = {"1": await deploy(name, "alice", "add emoji reactions")}
    chapter("Release 2 fails a gate in pre-production and halts")
    outcomes["2"] = await deploy(name, "bob", "rewrite the message search index")
    chapter("Release 3 ships, then breaks the heartbeat: messages stop being created")
    outcomes["3"] = await deploy(name, "carol", "batch message writes")
    chapter("A deploy while the pipeline is locked is refused")
    outcomes["refused"] = await deploy(name, "dave", "fix typo in the settings page")
    chapter("Unlock, and release 4 ships dave's queued commit with carol's fix")
    runner.ship.store.unlock(name, "carol", "write batching fixed; shipping the fix")
    runner.ship.store.record_merge(name, _commit(runner, name, "carol", "fix batched writes"))
    outcomes["4"] = await runner.ship_next(name, "carol")
    await _gather(elsewhere)
    for pipeline in runner.ship.running():
        await runner.settle(pipeline)
    return outcomes


async def _gather(work: list[Awaitable[object]]) -> None:
    await asyncio.gather(*work)


def _commit(runner: Runner, pipeline: str, author: str, message: str) -> Commit:
    sha = hashlib.sha1(f"{pipeline}/{author}/{message}".encode()).hexdigest()
    return Commit(sha, author, message, runner.ship.clock.now())


def _summary(store: Store, loaded: ShipConfig, outcomes: dict[str, DeployOutcome],
             console: Console) -> int:
    console.rule("Summary")
    for name in loaded.pipelines:
        console.print(report.releases_table(store, list(reversed(store.releases(name))),
                                            title=f"{name}: releases"))
    console.print(report.pipelines_table([store.pipeline_state(n) for n in loaded.pipelines]))
    # The demo spans about an hour and a half of pipeline time: measure over that.
    console.print(report.dora_table([dora.measure(store, n, days=1) for n in loaded.pipelines]))
    expected = {"1": State.DONE, "2": State.HALTED, "3": State.ROLLED_BACK, "4": State.DONE}
    wrong = [f"release {k}: {outcomes[k].release.state if outcomes[k].release else 'none'}, "
             f"expected {v}" for k, v in expected.items()
             if not outcomes[k].release or store.release(outcomes[k].release.id).state != v]
    if outcomes["refused"].lock is None:
        wrong.append("the deploy while locked was not refused by the lock")
    if wrong:
        console.print(line(("The story did not go as told:", "red"), " " + "; ".join(wrong)))
        return 1
    refused = outcomes["refused"]
    console.print(line(("✔ The story went as told.", "green"),
                       f" Refused while locked: {refused.reason}"))
    return 0
