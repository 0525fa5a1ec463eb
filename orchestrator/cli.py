"""The `ship` command line.

Exit codes: 0 ok · 1 the operation was refused or failed (locked, gate failed, rollback
refused) · 2 bad input (config, unknown pipeline or release).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import getpass
import hashlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from orchestrator import show
from orchestrator.engine import keep_sigterm
from orchestrator.problems import ConfigError, UnknownPipeline
from orchestrator.release import ID_MAX

if TYPE_CHECKING:
    from orchestrator import config as config_module

OK, REFUSED, BAD_INPUT = 0, 1, 2
STATE_DIR = Path(".ship")  # as orchestrator.runtime.Ship's default
ROLLBACK_WAIT_S = 3600.0  # a rollback through ship serve answers once every host started
EPILOG = """exit codes:
  0  ok
  1  the operation was refused or failed (locked, gate failed, rollback refused)
  2  bad input (config file, unknown pipeline or release)

environment:
  SHIP_DATABASE_URL  store URL (default sqlite:///.ship/ship.db; postgresql+psycopg://… works)
  SHIP_CONFIG        pipelines file (default pipelines.yaml)
  SHIP_USER          who you are in events and locks (default: your login)
  GITHUB_WEBHOOK_SECRET, SLACK_SIGNING_SECRET, SLACK_BOT_TOKEN   for `ship serve`
"""

class _Console(Console):
    def on_broken_pipe(self) -> None:
        raise BrokenPipeError  # main ends quietly, as for the JSON of a plain print


out = _Console()
err = _Console(stderr=True)
_opened: list[tuple[config_module.ShipConfig, Any]] = []  # what a stopped command looks at


class BadInput(Exception):
    pass


class Refused(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["agent"]:
        from rollout.agent import main as agent_main

        return agent_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        code = _answer(args)
        sys.stdout.flush()  # here, not at exit: a reader gone is then caught below
        return code
    except BrokenPipeError:
        # `ship schema | head -1`: the reader left. Nothing more to say, and the
        # interpreter's own flush at exit must not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _answer(args: argparse.Namespace) -> int:
    """Run the command: however it ends, the user reads one line per problem and no
    traceback (unless SHIP_DEBUG is set)."""
    with _signals_stop():
        try:
            return args.run(args)
        except ConfigError as error:
            for problem in error.problems:
                _say(("✘", "red"), " ", str(problem))
            _say(f"{len(error.problems)} problem(s) found")
            return BAD_INPUT
        except (BadInput, UnknownPipeline) as error:
            _say(("error:", "red"), " ", _text(error))
            return BAD_INPUT
        except Refused as error:
            _say(("refused:", "yellow"), " ", _text(error))
            return REFUSED
        except BrokenPipeError:
            raise  # the reader of our output left: main ends quietly
        except (KeyboardInterrupt, *_prefect_stops()) as stop:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one cannot cut the report
            return _stopped(getattr(stop, "signal", signal.SIGINT))
        except Exception as error:
            if os.environ.get("SHIP_DEBUG"):
                raise
            _say(("error:", "red"), f" {type(error).__name__}: {_text(error)} "
                 "(set SHIP_DEBUG=1 for a traceback)")
            return REFUSED


def _tell(*parts: show.Part) -> None:
    """One line on stdout; every string in it is data, never markup."""
    out.print(show.line(*parts), highlight=False, soft_wrap=True)


def _say(*parts: show.Part) -> None:
    """One line on stderr; every string in it is data, never markup."""
    err.print(show.line(*parts), highlight=False, soft_wrap=True)


def _text(error: BaseException) -> str:
    return str(error.args[0]) if error.args else str(error)


# --- stopped by a signal ------------------------------------------------------------------------


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived. A KeyboardInterrupt, so that asyncio lets it out of the
    event loop at once, whichever task it lands in."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signal = signum


@contextlib.contextmanager
def _signals_stop() -> Iterator[None]:
    """SIGTERM and SIGINT raise Stopped while a command runs (main thread only: a test may
    call main elsewhere). Prefect's flow engine puts its own SIGTERM handler in front while a
    flow runs; it raises TerminationSignal, then sends SIGTERM again, which lands here."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _on_signal(signum: int, _frame: object) -> None:
    # Work in threads (a build, a gate, a fleet call) cannot be interrupted, and closing the
    # event loop waits for its executor's threads: give it a fresh one, so it does not wait.
    with contextlib.suppress(RuntimeError):  # no event loop running
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor())
    raise Stopped(signum)


def _prefect_stops() -> tuple[type[BaseException], ...]:
    """Prefect's TerminationSignal (only looked up if Prefect is loaded: it is slow to import)."""
    prefect = sys.modules.get("prefect.exceptions")
    return (prefect.TerminationSignal,) if prefect else ()


def _stopped(signum: int) -> int:
    name = signal.Signals(signum).name
    # The line below is the last the person reads: Prefect's workers, cut short, would
    # otherwise log their backlog (warnings, and errors once its API is gone) after it.
    logging.disable(logging.CRITICAL)
    try:
        left = _left_behind()
    except Exception as error:  # the store may be what was interrupted
        left = [f"the store could not be read ({type(error).__name__})"]
    _say(f"stopped by {name}" + (f": {'; '.join(left)}; the next ship process (or `ship "
                                 "reconcile`) settles it" if left else ""))
    return _leave(128 + signum)


def _leave(code: int) -> int:
    """Exit now if threads still work on what was abandoned (the interpreter would wait for
    them to end, a build for many minutes): after the exit handlers, which stop Prefect's
    temporary API server."""
    busy = [t for t in threading.enumerate()
            if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if not busy:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


def _left_behind() -> list[str]:
    """What this process drove and did not finish: releases in flight, rollbacks running."""
    from orchestrator.store import this_process

    me, left = this_process(), []
    for loaded, store in _opened:
        for name in loaded.pipelines:
            state = store.pipeline_state(name)
            for release in state.flights:
                driver = store.driver(release.id)
                if driver and driver.owner == me:
                    left.append(f"release {release.name} was {release.state}")
            rollback = state.rollback
            driver = rollback and store.driver(rollback.from_id, rollback.id)
            if driver and driver.owner == me:
                left.append(f"the rollback of {name} was running")
    return left


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ship", description="Every merge to main becomes a production release within "
        "minutes; trouble is noticed and undone fast.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", type=Path,
                        default=Path(os.environ.get("SHIP_CONFIG", "pipelines.yaml")),
                        help="pipelines file (default: pipelines.yaml)")
    parser.add_argument("--speed", type=_positive, default=1.0,
                        help="run pipeline time N× faster (for simulated pipelines)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], text: str,
                ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text, epilog=EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(run=run)
        return sub

    demo = command("demo", _demo, "run the whole story on the simulated pipelines")
    demo.add_argument("--pipeline", default="us", help="pipeline the story runs on")
    demo.add_argument("--demo-speed", type=_positive, default=90.0, dest="demo_speed",
                      help="pipeline minutes per real minute (default 90)")

    deploy = command("deploy", _deploy, "ship a commit (and whatever else is queued)")
    deploy.add_argument("pipeline")
    deploy.add_argument("--sha", help="commit to ship (default: a new simulated commit)")
    deploy.add_argument("--author", default=None, help="who merged it (default: you)")
    deploy.add_argument("--message", default="", help="commit message")
    deploy.add_argument("--no-watch", action="store_true",
                        help="return once live instead of waiting for the heartbeat watch")

    status = command("status", _status, "pipelines: live release, lock, what is in flight")
    status.add_argument("pipeline", nargs="?")
    status.add_argument("--json", action="store_true")

    releases = command("releases", _releases, "a pipeline's releases with stage durations")
    releases.add_argument("pipeline")
    releases.add_argument("--limit", type=_limit, default=20, help=LIMIT_HELP)
    releases.add_argument("--json", action="store_true")

    events = command("events", _events, "a pipeline's event log")
    events.add_argument("pipeline")
    events.add_argument("--release", type=_release_number, metavar="NUMBER",
                        help="only this release number")
    events.add_argument("--limit", type=_limit, default=50, help=LIMIT_HELP)
    events.add_argument("--json", action="store_true")

    rollback = command("rollback", _rollback, "roll back by hand (no gates); locks the pipeline")
    rollback.add_argument("pipeline")
    target = rollback.add_mutually_exclusive_group()
    target.add_argument("--to", type=_release_number, metavar="RELEASE",
                        help="release number to go back to")
    target.add_argument("--minutes-ago", type=_minutes_ago, metavar="N",
                        help="go back to what was live N minutes ago (default: the lookback)")
    rollback.add_argument("--reason", default="manual rollback")

    lock = command("lock", _lock, "stop releases from being promoted")
    lock.add_argument("pipeline")
    lock.add_argument("--reason", required=True)

    unlock = command("unlock", _unlock, "let releases be promoted again (a reason is required)")
    unlock.add_argument("pipeline")
    unlock.add_argument("--reason", required=True)

    resume = command("resume", _resume, "promote again although the heartbeat has no data "
                     "(lifts the hold; a reason is required)")
    resume.add_argument("pipeline")
    resume.add_argument("--reason", required=True)

    dora = command("dora", _dora, "DORA metrics over 1, 7 and 30 days")
    dora.add_argument("pipeline", nargs="?")
    dora.add_argument("--json", action="store_true")

    validate = command("validate", _validate, "check a pipelines file; every problem, with line")
    validate.add_argument("file", nargs="?", type=Path)

    command("schema", _schema, "print the JSON Schema of pipelines.yaml (for editors)")

    settling = command("reconcile", _reconcile, "settle the releases a stopped ship process "
                       "left (resume or stop each), page overdue stages, check the store")
    settling.add_argument("--take-over", action="store_true",
                          help="also claim releases driven from other machines (when gone)")
    settling.add_argument("--no-watch", action="store_true",
                          help="leave heartbeat watches to the next process, not resume them")
    settling.add_argument("--json", action="store_true")

    serve = command("serve", _serve, "serve GitHub webhooks, Slack buttons and /healthz over "
                    "HTTP, and run the pipelines' releases")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0: any free)")
    serve.add_argument("--prefect-deployments", action="store_true",
                       help="also serve the flows as Prefect deployments (needs PREFECT_API_URL)")
    serve.add_argument("--drain-timeout", type=_seconds, default=300.0, metavar="SECONDS",
                       help="on SIGTERM, how long releases in flight may take to finish")
    commands.add_parser("agent", help="run a host agent (see `ship agent --help`)")
    for sub in (deploy, status, releases, events, rollback, lock, unlock, resume, dora):
        sub.add_argument("--as", dest="actor", default=None, help="who you are (default: login)")
    return parser


# --- arguments: bad values are refused by argparse (exit 2, one line naming the option) ---

MAX_LIMIT = 10_000
MAX_MINUTES_AGO = 10 * 365 * 24 * 60
LIMIT_HELP = f"how many (1 to {MAX_LIMIT})"


def _whole(text: str, low: int, high: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text} is out of range: {what} is {low} to {high}")
    return value


def _real(text: str, low: float, high: float, what: str, low_ok: bool = True) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    above = low <= value if low_ok else low < value
    if not (math.isfinite(value) and above and value <= high):
        bound = "at least" if low_ok else "more than"
        raise argparse.ArgumentTypeError(f"{text} is out of range: {what} is a finite number "
                                         f"{bound} {low:g} and at most {high:g}")
    return value


def _release_number(text: str) -> int:
    return _whole(text, 1, ID_MAX, "a release number")


def _limit(text: str) -> int:
    return _whole(text, 1, MAX_LIMIT, "a limit")


def _port(text: str) -> int:
    return _whole(text, 0, 65535, "a port")


def _minutes_ago(text: str) -> float:
    return _real(text, 0, MAX_MINUTES_AGO, "minutes ago")


def _seconds(text: str) -> float:
    return _real(text, 0, 7 * 24 * 3600, "a time in seconds")


def _positive(text: str) -> float:
    return _real(text, 0, 1e6, "a speed", low_ok=False)


# --- commands ---------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    from orchestrator import config as config_module

    path = args.file or args.config
    loaded = config_module.load(path)
    names = ", ".join(f"{p.name} ({p.region})" for p in loaded.pipelines.values())
    _tell(("✔", "green"), f" {path}: {len(loaded.pipelines)} pipeline(s): {names}")
    return OK


def _schema(_args: argparse.Namespace) -> int:
    from orchestrator import config as config_module

    print(json.dumps(config_module.json_schema(), indent=2))
    return OK


def _status(args: argparse.Namespace) -> int:
    from orchestrator import report
    from orchestrator.reconcile import attention

    loaded, store = _open(args)
    names = [_pipeline(loaded, args.pipeline)] if args.pipeline else list(loaded.pipelines)
    states = [store.pipeline_state(name) for name in names]
    if args.json:
        rows = []
        for state in states:
            last = store.releases(state.name, limit=1)
            rows.append(report.pipeline_dict(state) | {
                "last_release": report.release_dict(store, last[0]) if last else None,
                "attention": attention(store, state.name)})
        print(json.dumps(rows if not args.pipeline else rows[0], indent=2))
        return OK
    out.print(report.pipelines_table(states))
    for state in states:
        last = store.releases(state.name, limit=3)
        if last:
            out.print(report.releases_table(store, last, title=f"{state.name}: latest releases"))
        for fault in attention(store, state.name):
            _tell(("!", "yellow"), f" {state.name} {fault['kind']}: {fault['message']}")
    return OK


def _releases(args: argparse.Namespace) -> int:
    from orchestrator import report

    name, store = _named(args)
    releases = store.releases(name, limit=args.limit)
    if args.json:
        print(json.dumps([report.release_dict(store, r) for r in releases], indent=2))
    else:
        out.print(report.releases_table(store, releases, title=f"{name}: releases"))
    return OK


def _events(args: argparse.Namespace) -> int:
    name, store = _named(args)
    release_id = None
    if args.release is not None:
        release = store.release_by_number(name, args.release)
        if release is None:
            raise BadInput(f"{name} has no release #{args.release}")
        release_id = release.id
    events = store.events(name, release_id=release_id, limit=args.limit)
    if args.json:
        print(json.dumps([{"at": e.at.isoformat(), "kind": e.kind, "actor": e.actor,
                           "message": e.message, "release_id": e.release_id, "data": e.data}
                          for e in events], indent=2))
        return OK
    for e in events:
        _tell((f"{e.at:%Y-%m-%d %H:%M:%S}", "dim"), f" {e.kind:<14} ", (f"{e.actor:<10}", "cyan"),
              f" {e.message}")
    return OK


def _lock(args: argparse.Namespace) -> int:
    name, store = _named(args)
    claim = store.take_lock(name, _actor(args), args.reason, auto=False)
    if not claim.won:
        raise Refused(f"{name} is already {claim.reason}")
    _tell(f"🔒 {name} {claim.lock.describe()}")
    return OK


def _unlock(args: argparse.Namespace) -> int:
    name, store = _named(args)
    lock = store.unlock(name, _actor(args), args.reason)
    if lock is None:
        raise Refused(f"{name} is not locked")
    _tell(f"🔓 {name} unlocked (was {lock.describe()})")
    return OK


def _resume(args: argparse.Namespace) -> int:
    name, store = _named(args)
    held = store.override_hold(name, _actor(args), args.reason)
    if held is None:
        raise Refused(f"{name} is not held")
    _tell(f"▶ {name}: promotions resume (the hold was: {held})")
    return OK


def _dora(args: argparse.Namespace) -> int:
    from orchestrator import dora, report

    loaded, store = _open(args)
    names = [_pipeline(loaded, args.pipeline)] if args.pipeline else list(loaded.pipelines)
    figures = [dora.measure(store, name, days) for name in names for days in (1, 7, 30)]
    if args.json:
        print(json.dumps([f.as_dict() for f in figures], indent=2))
    else:
        out.print(report.dora_table(figures))
    return OK


def _deploy(args: argparse.Namespace) -> int:
    from shiptypes import Commit

    loaded, store = _open(args)
    name = _pipeline(loaded, args.pipeline)
    actor = _actor(args)
    sha = args.sha or hashlib.sha1(f"{name}{time.time_ns()}".encode()).hexdigest()
    if not all(c in "0123456789abcdef" for c in sha.lower()) or not 7 <= len(sha) <= 64:
        raise BadInput(f"--sha {sha!r} is not a commit id (7 to 64 hex digits)")
    commit = Commit(sha.lower(), args.author or actor, args.message, store.now())
    outcome = _run(store, loaded, lambda runner: runner.deploy(name, [commit], actor,
                                                              watch=not args.no_watch),
                   settle=not args.no_watch)
    if not outcome.started:
        if outcome.lock is not None:
            raise Refused(f"{name} is {outcome.reason}")
        _tell(f"queued {sha[:7]}: {outcome.reason}; it rides the next release")
        return OK
    _tell(f"{outcome.release.name}: {outcome.state}"
          + (f" ({outcome.release.reason})" if outcome.release.reason else ""))
    return OK if outcome.shipped or outcome.state == "done" else REFUSED


def _rollback(args: argparse.Namespace) -> int:
    """Through a running `ship serve` on this store when there is one (it has the fleet
    warm: the hosts are told in a fraction of a second), else in this process."""
    outcome = _rollback_through_serve(args)
    if outcome is None:
        outcome = _rollback_here(args)
    if outcome.bad_input:
        raise BadInput(outcome.reason)
    if not outcome.won:
        raise Refused(outcome.reason)
    name = args.pipeline
    _tell(f"⏪ {outcome.reason}; {name} is locked (unlock with `ship unlock {name} "
          "--reason …`)")
    return OK


def _rollback_here(args: argparse.Namespace) -> Any:
    """Roll back in this process, then settle what a stopped process left. With a Prefect
    server (PREFECT_API_URL) as a flow run of it; without one, outside Prefect's engine
    (orchestrator.moves): a temporary API would cost ~10 s before the fleet is told."""
    from orchestrator.runtime import Ship, use

    loaded, store = _open(args)
    name = _pipeline(loaded, args.pipeline)
    ship = use(Ship(loaded, store))

    async def rollback_then_reconcile() -> Any:
        if os.environ.get("PREFECT_API_URL"):
            keep_sigterm()
            from orchestrator.flows import rollback_flow as roll_back
        else:
            from orchestrator.moves import roll_back
        outcome = await roll_back(name, actor=_actor(args), reason=args.reason,
                                  to_number=args.to, minutes_ago=args.minutes_ago)
        followers = ship.pipeline(name).watches  # the fleet's convergence, followed
        while followers:
            await asyncio.gather(*list(followers), return_exceptions=True)
        await _reconciled(ship)
        return outcome

    return asyncio.run(rollback_then_reconcile())


def _rollback_through_serve(args: argparse.Namespace) -> Any:
    """The outcome of the rollback as a running `ship serve` did it; None when no server
    runs on this store and pipelines file, or it did not answer."""
    from orchestrator import handle
    from orchestrator.release import RollbackOutcome

    served = handle.find(STATE_DIR, args.config)
    if served is None:
        return None
    asked = {"pipeline": args.pipeline, "actor": _actor(args), "reason": args.reason,
             "to": args.to, "minutes_ago": args.minutes_ago}
    try:
        status, answer = handle.call(served, "/api/rollback", asked, timeout=ROLLBACK_WAIT_S)
    except handle.Unreachable as error:
        _say(f"{error}: rolling back from this process")
        return None
    if status in (400, 404) and "error" in answer:
        raise BadInput(answer["error"])
    if status not in (200, 400, 409):
        _say(f"ship serve answered {status}: rolling back from this process")
        return None
    return RollbackOutcome(bool(answer.get("won")), str(answer.get("reason", "")),
                           bad_input=bool(answer.get("bad_input")))


def _reconcile(args: argparse.Namespace) -> int:
    from orchestrator.reconcile import audit, reconcile

    loaded, store = _open(args)
    outcomes = _run(store, loaded, lambda runner: reconcile(
        runner.ship, take_over=args.take_over, watch=not args.no_watch),
        settle=not args.no_watch, reconcile_first=False)
    problems = {name: audit(store, name) for name in loaded.pipelines}
    if args.json:
        print(json.dumps({"reconciled": [o.as_dict() for o in outcomes],
                          "problems": problems}, indent=2))
    else:
        for o in outcomes:
            _tell(f"{o.pipeline} {o.release or '-'} ({o.was}) → {o.action}: {o.detail}")
        if not outcomes:
            _tell("nothing to reconcile: no release was left by a stopped process")
        for name, found in problems.items():
            for problem in found:
                _say(("✘", "red"), f" {name}: {problem}")
    failed = any(o.action == "error" for o in outcomes)
    return REFUSED if failed or any(problems.values()) else OK


def _serve(args: argparse.Namespace) -> int:
    from orchestrator.runtime import Ship
    from orchestrator.server import run

    loaded, store = _open(args)
    prefect = None
    if args.prefect_deployments:
        from orchestrator.deployments import NeedsPrefectAPI, PrefectServing

        try:
            prefect = PrefectServing(args.config, store.url)
        except NeedsPrefectAPI as error:
            raise BadInput(str(error)) from None
    return run(Ship(loaded, store), args.host, args.port, args.drain_timeout, prefect,
               config_path=args.config)


def _demo(args: argparse.Namespace) -> int:
    from orchestrator.demo import run_demo

    keep_sigterm()

    # Piped output (CI logs) gets room for the stage table instead of 80 columns.
    console = out if out.is_terminal else Console(width=120)
    return run_demo(args.config, args.pipeline, args.demo_speed, console)


# --- helpers ------------------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> tuple[config_module.ShipConfig, Any]:
    from orchestrator import config as config_module
    from orchestrator.store import Store
    from shiptypes import ScaledClock, WallClock, utcnow

    loaded = config_module.load(args.config)
    store = Store()
    _opened.append((loaded, store))
    if args.speed != 1.0:
        # Scaled pipeline time carries on from where the last run left it, so times
        # recorded by earlier runs are never in this run's future.
        latest = store.latest_event_at()
        store.clock = ScaledClock(args.speed, max(filter(None, [utcnow(), latest])))
    else:
        store.clock = WallClock()
    return loaded, store


def _named(args: argparse.Namespace) -> tuple[str, Any]:
    """The pipeline the command names (checked against the config), and the store."""
    loaded, store = _open(args)
    return _pipeline(loaded, args.pipeline), store


def _pipeline(loaded: config_module.ShipConfig, name: str) -> str:
    return loaded.pipeline(name).name


def _actor(args: argparse.Namespace) -> str:
    return args.actor or os.environ.get("SHIP_USER") or getpass.getuser()


def _run(store: Any, loaded: config_module.ShipConfig, work: Callable[[Any], Any],
         settle: bool = True, reconcile_first: bool = True) -> Any:
    """Run flows in this process (Prefect's temporary API unless PREFECT_API_URL is set),
    after settling what a stopped ship process left (orchestrator.reconcile). With
    `settle`, wait for the watches and fleet followers the work started."""
    keep_sigterm()
    from orchestrator.runner import Runner
    from orchestrator.runtime import Ship, use

    runner = Runner(use(Ship(loaded, store)))

    async def go() -> Any:
        if reconcile_first:
            await _reconciled(runner.ship)
        result = await work(runner)
        if settle:
            for name in runner.ship.running():
                await runner.settle(name)
        return result

    return asyncio.run(go())


async def _reconciled(ship: Any) -> None:
    """Settle what a stopped ship process left (orchestrator.reconcile), saying what."""
    keep_sigterm()  # reconcile may resume flows
    from orchestrator.reconcile import reconcile

    for o in await reconcile(ship):
        if o.action != "left":
            _say(f"reconciled {o.release or o.pipeline} ({o.was}) → {o.action}: {o.detail}")


if __name__ == "__main__":
    sys.exit(main())
