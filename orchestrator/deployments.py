"""ship's flows as Prefect deployments, for `ship serve --prefect-deployments`.

`ship serve` always runs releases in its own process (fast, nothing to set up). With
--prefect-deployments it also registers `release`, `watch` and `rollback` as deployments
named `ship` and serves them, so they show in the Prefect UI and a run started there (or
through the API) is executed: by this process's Prefect runner, or by Prefect workers on
other machines that import the `ship` package. The entrypoints are module paths
(orchestrator.flows.release_flow …), so any machine with ship installed can load them; a
run started that way finds its pipelines through SHIP_CONFIG and SHIP_DATABASE_URL, which
this module sets for the runner's children.

Serving needs a real Prefect API (PREFECT_API_URL: `prefect server start`, or Prefect
Cloud); the temporary in-process API is only good for flows run in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.runner import Runner as PrefectRunner

from orchestrator import flows

DEPLOYMENT = "ship"
FLOWS = (flows.release_flow, flows.watch_flow, flows.rollback_flow)


class NeedsPrefectAPI(Exception):
    pass


async def deployments() -> list[RunnerDeployment]:
    return [await flow.ato_deployment(name=DEPLOYMENT, tags=["ship"],
                                      description=(flow.description or "").split("\n")[0],
                                      entrypoint_type=EntrypointType.MODULE_PATH)
            for flow in FLOWS]


class PrefectServing:
    """Registers the deployments and runs a Prefect runner for them in this event loop."""

    def __init__(self, config_path: Path, database_url: str) -> None:
        if not os.environ.get("PREFECT_API_URL"):
            raise NeedsPrefectAPI("--prefect-deployments needs a Prefect API: start one with "
                                  "`prefect server start` and set PREFECT_API_URL")
        # The runner's flow runs are child processes: they build their world from these.
        os.environ["SHIP_CONFIG"] = str(config_path.resolve())
        os.environ["SHIP_DATABASE_URL"] = database_url
        self.runner = PrefectRunner(name="ship-serve", pause_on_shutdown=False)
        self.names: list[str] = []
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        for deployment in await deployments():
            await self.runner.aadd_deployment(deployment)
            self.names.append(f"{deployment.flow_name}/{deployment.name}")
        self._task = asyncio.create_task(self.runner.start())
        # The runner installs its own SIGTERM handler as it starts; let it, so that the
        # caller can put ship's back afterwards.
        await asyncio.sleep(0)

    async def stop(self, timeout: float = 10.0) -> None:
        if self._task is None:
            return
        if self.runner.started:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.runner.astop(), timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._task, timeout)
