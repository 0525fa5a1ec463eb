"""`ship serve`: one process, one event loop, serving HTTP and running the releases.

    POST /webhooks/github     merges in (orchestrator.intake): each push queues its commits
                              and kicks the pipeline's release train
    POST /slack/interactions  the buttons on release messages (orchestrator.slack_actions)
    POST /api/rollback        the CLI's rollback, behind the token of the server's handle
                              (orchestrator.api, orchestrator.handle)
    GET  /healthz             200 while serving, 503 while stopping

A request without a well-formed signature (or with its endpoint's secret unset) is refused
before a byte of its body is read; a body is read as a stream and refused (413) as soon as
it passes its endpoint's limit (25 MB for webhooks, 1 MiB for Slack), at most
BODIES_AT_ONCE per endpoint at a time (orchestrator.untrusted), and verified only then.

Releases run as Prefect flows in this process (Runner.kick); with --prefect-deployments
the flows are also served as Prefect deployments (orchestrator.deployments). The web UI,
when installed (orchestrator.web), mounts on the same app.

On SIGTERM (or Ctrl-C) the server stops accepting requests, no new release starts, and the
releases in flight get `drain_timeout` seconds to finish. One still running after that is
stopped and marked failed, and its commits are queued again: the next `ship serve` ships
them first. Watches are cut short; what the notifiers still hold is sent; the exit code
is 0. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from orchestrator import handle, intake, slack_actions
from orchestrator.api import BODY_LIMIT as OPERATOR_BODY
from orchestrator.api import OperatorApi
from orchestrator.engine import keep_sigterm
from orchestrator.intake import GitHubIntake
from orchestrator.release import IN_FLIGHT, State
from orchestrator.runner import DeployOutcome, Runner
from orchestrator.runtime import Ship, use
from orchestrator.slack_actions import SlackActions
from orchestrator.store import Release
from orchestrator.untrusted import CLOSE, BodyReader, BodyRefused

if TYPE_CHECKING:
    from orchestrator.deployments import PrefectServing

MAX_BODY = 25 * 1024 * 1024  # GitHub caps webhook payloads at 25 MB
MAX_SLACK_BODY = 1024 * 1024  # a button press is a few KB, with the message's blocks
# Unverified bodies read at once per endpoint: what they can hold is at most this × the limit.
BODIES_AT_ONCE = 2
OPERATOR_BODIES_AT_ONCE = 4  # behind a token: a person's few requests at a time


class ServeRunner(Runner):
    """A Runner that can be told to stop: no release starts once `stopping`, and the ones
    in flight can be waited for, or cut."""

    def __init__(self, ship: Ship) -> None:
        super().__init__(ship)
        self.stopping = False
        self._shipping: dict[asyncio.Task, str] = {}

    def _claim(self, pipeline: str, actor: str,
               behind_lock: bool = False) -> Release | DeployOutcome:
        if self.stopping:
            return DeployOutcome(False, "ship serve is stopping: merges wait for its restart")
        return super()._claim(pipeline, actor, behind_lock)

    async def _fly(self, pipeline: str, release: Release, watch: bool,
                   behind_lock: bool = False) -> DeployOutcome:
        task = asyncio.current_task()
        assert task is not None
        self._shipping[task] = pipeline
        try:
            return await super()._fly(pipeline, release, watch, behind_lock)
        finally:
            self._shipping.pop(task, None)

    @property
    def shipping(self) -> list[str]:
        return sorted(set(self._shipping.values()))

    async def drain(self, timeout: float, force: asyncio.Event) -> list[str]:
        """Let releases in flight finish within `timeout`; cut the rest. Returns the
        pipelines whose release was cut."""
        self.stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._shipping and loop.time() < deadline and not force.is_set():
            await asyncio.sleep(0.05)
        cut = list(self._shipping.items())
        for task, _ in cut:
            task.cancel()
        await asyncio.gather(*(task for task, _ in cut), return_exceptions=True)
        for pipeline in sorted({name for _, name in cut}):
            self._interrupted(pipeline)
        for name in self.ship.running():
            for watch in list(self.ship.pipeline(name).watches):
                watch.cancel()
        return sorted({name for _, name in cut})

    def _interrupted(self, pipeline: str) -> None:
        for release in self.ship.store.pipeline_state(pipeline).flights:
            self._cut(release)

    def _cut(self, release: Release) -> None:
        rt = self.ship.pipeline(release.pipeline)
        if release.state not in IN_FLIGHT | {State.QUEUED}:
            return
        reason = f"ship serve stopped while the release was {release.state}"
        release = rt.store.move(release.id, State.FAILED, reason=reason)
        requeued = rt.store.requeue_merges(release.id)
        rt.notify("halted", f"{release.name} failed: {reason}; its {requeued} commit(s) "
                  "ride the next release", release, level="warning")


def create_app(ship: Ship, runner: Runner, env: Mapping[str, str] | None = None,
               api_token: str = "") -> FastAPI:
    """The HTTP face of ship: GitHub webhooks, Slack buttons, health, the operator API for
    the CLI (with `api_token`), and the web UI when it is installed. Secrets come from `env`
    (default: the process environment)."""
    env = os.environ if env is None else env
    github = GitHubIntake(ship, runner, env.get(intake.SECRET_ENV, ""))
    slack = SlackActions(ship, runner, env.get(slack_actions.SECRET_ENV, ""))
    app = FastAPI(title="ship", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ship, app.state.runner, app.state.slack = ship, runner, slack
    app.state.stopping = False
    app.state.prefect = "starting"  # ready once its API answers (warm_prefect)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        stopping = app.state.stopping
        return JSONResponse({"ok": not stopping, "stopping": stopping,
                             "prefect": app.state.prefect,
                             "pipelines": list(ship.config.pipelines)},
                            status_code=503 if stopping else 200)

    async def answer(request: Request, handler: GitHubIntake | SlackActions | OperatorApi,
                     reader: BodyReader) -> JSONResponse:
        """Refuse what can be refused unread (stopping, no secret, no signature), read the
        body within the endpoint's bounds, then let the handler verify and act."""
        if app.state.stopping:
            return JSONResponse({"error": "ship serve is stopping"}, status_code=503,
                                headers=CLOSE)
        refusal = handler.refuse_unread(request.headers)
        if refusal is not None:
            return JSONResponse(refusal[1], status_code=refusal[0], headers=CLOSE)
        try:
            body = await reader.read(request)
        except BodyRefused as refused:
            return JSONResponse({"error": str(refused)}, status_code=refused.status,
                                headers=CLOSE)
        status, answer_ = await handler.handle(body, request.headers)
        return JSONResponse(answer_, status_code=status)

    webhooks = BodyReader(MAX_BODY, BODIES_AT_ONCE)
    interactions = BodyReader(MAX_SLACK_BODY, BODIES_AT_ONCE)

    @app.post("/webhooks/github")
    async def github_webhook(request: Request) -> JSONResponse:
        return await answer(request, github, webhooks)

    @app.post("/slack/interactions")
    async def slack_interaction(request: Request) -> JSONResponse:
        return await answer(request, slack, interactions)

    operator = OperatorApi(ship, runner, api_token)
    operator_bodies = BodyReader(OPERATOR_BODY, OPERATOR_BODIES_AT_ONCE)

    @app.post("/api/rollback")
    async def rollback(request: Request) -> JSONResponse:
        return await answer(request, operator, operator_bodies)

    if importlib.util.find_spec("orchestrator.web") is not None:
        importlib.import_module("orchestrator.web").mount_ui(app, ship, runner)
    return app


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `serve` decides how ship stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(ship: Ship, host: str, port: int, drain_timeout: float,
                prefect: PrefectServing | None = None,
                say: Callable[[str], None] = print,
                config_path: Path = Path("pipelines.yaml")) -> int:
    """Serve until SIGTERM or SIGINT, then stop gracefully. Returns the exit code."""
    use(ship)
    runner = ServeRunner(ship)
    token = handle.new_token()
    app = create_app(ship, runner, api_token=token)
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                    access_log=False, lifespan="off",
                                    timeout_graceful_shutdown=5))
    if prefect is not None:
        await prefect.start()
        say(f"Prefect deployments served: {', '.join(prefect.names)}")
    stop, force = asyncio.Event(), asyncio.Event()
    keep_sigterm()  # here SIGTERM means drain
    _on_signals(stop, force)
    serving = asyncio.create_task(server.serve())
    if not await _started(server, serving):
        say(f"ship serve could not listen on {host}:{port}")
        return 1
    bound = server.servers[0].sockets[0].getsockname()
    say(f"ship serve listening on http://{bound[0]}:{bound[1]} "
        f"(pipelines: {', '.join(ship.config.pipelines)})")
    _publish_handle(ship, bound, token, config_path)
    for name in (intake.SECRET_ENV, slack_actions.SECRET_ENV):
        if not os.environ.get(name):
            say(f"{name} is not set: its endpoint refuses every request (503)")
    warming = asyncio.create_task(warm_prefect(app, say))
    starting = asyncio.create_task(_settle_and_resume(ship, runner, say))
    await asyncio.wait([serving, asyncio.create_task(stop.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    starting.cancel()
    warming.cancel()
    say("ship serve stopping: no new requests; waiting for releases in flight "
        f"(up to {drain_timeout:g}s)")
    app.state.stopping = True
    handle.withdraw(ship.state_dir, os.getpid())
    server.should_exit = True
    await serving
    cut = await runner.drain(drain_timeout, force)
    sent = await _wind_down(ship, runner, app.state.slack, prefect, force)
    say("ship serve stopped" + (f"; releases cut short on {', '.join(cut)}" if cut else "")
        + ("" if sent else "; some notices were not sent"))
    return 0


async def _wind_down(ship: Ship, runner: Runner, slack: SlackActions,
                     prefect: PrefectServing | None, force: asyncio.Event) -> bool:
    """After the drain: rollbacks asked for by Slack or the CLI finish, the Prefect runner
    stops, the notifiers send what they hold, providers stop. Whether every notice was sent."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(slack.settle(), runner.settle_rollbacks()),
                               0.1 if force.is_set() else 30)
    if prefect is not None:
        await prefect.stop()
    sent = await asyncio.to_thread(ship.close_notifiers, 1.0 if force.is_set() else 10.0)
    ship.close_providers()
    return sent


def _publish_handle(ship: Ship, bound: tuple, token: str, config_path: Path) -> None:
    """Tell CLIs on this machine where this server is (orchestrator.handle)."""
    host, port = bound[0], bound[1]
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    handle.publish(ship.state_dir, handle.ServeHandle(
        url=f"http://{host}:{port}", pid=os.getpid(), token=token,
        config=str(config_path.resolve()), store=handle.store_key(ship.store.url)))


async def _started(server: uvicorn.Server, serving: asyncio.Task) -> bool:
    while not server.started:
        if serving.done():
            with contextlib.suppress(BaseException):
                serving.result()  # uvicorn exits (SystemExit) when it cannot bind
            return False
        await asyncio.sleep(0.02)
    return True


def _on_signals(stop: asyncio.Event, force: asyncio.Event) -> None:
    def on_signal() -> None:
        if stop.is_set():
            force.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


async def warm_prefect(app: FastAPI, say: Callable[[str], None]) -> None:
    """Reach Prefect's API now, starting the temporary one if no PREFECT_API_URL is set
    (~10 s), and run one flow: a process's first flow run costs ~1 s more than the next
    (the engine's imports and set-up), and the first flow asked of a server may be a
    person's rollback."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    def reach() -> Exception | None:
        # In a thread: Prefect starts its temporary API synchronously (it would block
        # this loop, /healthz included, for its ~10 s).
        with get_client(sync_client=True) as client:
            return client.api_healthcheck()

    @flow(name="serve-started", persist_result=False, validate_parameters=False)
    async def serve_started(pipelines: list[str]) -> int:
        return len(pipelines)

    try:
        failure = await asyncio.to_thread(reach)
        if failure is None:
            await serve_started(list(app.state.ship.config.pipelines))
    except Exception as error:
        failure = error
    app.state.prefect = "ready" if failure is None else "unreachable"
    if failure is not None:
        say(f"Prefect's API did not answer ({type(failure).__name__}: {failure}); flows try "
            "again when they run")


async def _settle_and_resume(ship: Ship, runner: Runner, say: Callable[[str], None]) -> None:
    """Settle what a stopped process left (orchestrator.reconcile: releases half-way,
    watches cut short), then ship what was merged while no server ran."""
    from orchestrator.reconcile import reconcile

    try:
        for outcome in await reconcile(ship, runner):
            say(f"reconciled {outcome.release or outcome.pipeline} ({outcome.was}) → "
                f"{outcome.action}: {outcome.detail}")
    except Exception as error:  # still ship what is queued; the stage deadlines will page
        say(f"reconcile failed: {type(error).__name__}: {error}")
    for name in ship.config.pipelines:
        if ship.store.pipeline_state(name).pending_merges:
            runner.kick(name, actor="ship")


def run(ship: Ship, host: str, port: int, drain_timeout: float,
        prefect: PrefectServing | None = None,
        config_path: Path = Path("pipelines.yaml")) -> int:
    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    return asyncio.run(serve(ship, host, port, drain_timeout, prefect, say, config_path))
