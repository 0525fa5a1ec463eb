"""What `ship` shows people: text from data (reasons, commit messages, actors, errors) is
shown as it is, never read as rich markup, in every state a release can be in; and what it
takes as input: numbers in range, or exit 2 with the option named."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator import cli, report
from orchestrator.config import ConfigError, Problem
from orchestrator.notify import Notice
from orchestrator.notify.console import ConsoleNotifier
from orchestrator.reconcile import FAULT_KINDS
from orchestrator.release import TRANSITIONS, State
from orchestrator.runner import DeployOutcome
from orchestrator.store import Store
from shiptypes import Commit, GateResult
from tests.test_cli import env, ship  # noqa: F401 - env is a fixture

# Markup that fails (an empty style), markup that styles, a link, a terminal escape, an
# emoji code, and a trailing backslash.
NASTY = "[]x[/] [bold red]boom[/] [link=file:///etc/passwd]x[/link] \x1b[31m :smile: \\"
SHOWN = NASTY.replace("\x1b", "\\x1b")


def path_to(target: State) -> list[State]:
    """The shortest way from queued to `target` through the release model's transitions."""
    paths: dict[State, list[State]] = {State.QUEUED: []}
    frontier = [State.QUEUED]
    while frontier:
        frontier = [paths.setdefault(after, [*paths[before], after]) and after
                    for before in frontier for after in sorted(TRANSITIONS[before])
                    if after not in paths]
    return paths[target]


def store_in_every_state(url: str) -> Store:
    """Pipeline us with a release in every state, everything people read full of markup."""
    store = Store(url)
    for n, state in enumerate(State, 1):
        store.record_merge("us", Commit(f"{n:040x}", NASTY, NASTY, store.now()))
        release = store.start_release("us", 1, NASTY, in_flight=len(State)).release
        for step in path_to(state):
            if step == State.LIVE:
                store.go_live(release.id, actor=NASTY)
            else:
                store.move(release.id, step, actor=NASTY, reason=NASTY)
        store.record_gate(release.id, GateResult(NASTY, n % 2 == 0, NASTY))
        assert store.release(release.id).state == state
    store.take_lock("us", NASTY, NASTY)
    store.set_hold("us", NASTY, actor=NASTY)
    for kind in FAULT_KINDS:
        store.event("us", kind, NASTY, actor=NASTY)
    return store


@pytest.fixture
def nasty(env: dict[str, str], sim_config_file: Path) -> dict[str, str]:  # noqa: F811
    """The every-state store for the `ship` subprocesses, on a wide terminal (no folding)."""
    store_in_every_state(env["SHIP_DATABASE_URL"]).close()
    return {**env, "COLUMNS": "1000"}


def run(environ: dict[str, str], config: Path, *args: str) -> tuple[int, str, str]:
    result = ship("-c", str(config), *args, env=environ, cwd=config.parent)
    assert "Traceback" not in result.stderr and "\x1b" not in result.stdout + result.stderr
    return result.returncode, result.stdout, result.stderr


def test_every_state_has_a_style() -> None:
    for state in State:
        assert report.STATE_STYLE.get(state), f"state {state} has no style in report.py"
        assert str(report.state_text(state)) == state.value


def test_status_releases_and_events_show_data_as_it_is_in_every_state(
        nasty: dict[str, str], sim_config_file: Path) -> None:
    for args in (["status"], ["status", "us"], ["releases", "us"], ["events", "us"],
                 ["events", "us", "--release", "2"]):
        code, stdout, stderr = run(nasty, sim_config_file, *args)
        assert code == 0, stderr
        assert SHOWN in stdout, args
    _, stdout, _ = run(nasty, sim_config_file, "releases", "us")
    assert all(f" {state} " in stdout for state in State)
    _, stdout, _ = run(nasty, sim_config_file, "status")
    newest_fault = f"! us {FAULT_KINDS[-1]}: {SHOWN}"  # status lists the newest few
    for shown in (f"🔒 {SHOWN}: {SHOWN}", newest_fault, "us#6 (promoting)"):
        assert shown in stdout
    code, stdout, stderr = run(nasty, sim_config_file, "dora")
    assert code == 0 and "DORA" in stdout, stderr


def test_lock_unlock_resume_and_refusals_show_data_as_it_is(
        nasty: dict[str, str], sim_config_file: Path) -> None:
    code, stdout, _ = run(nasty, sim_config_file, "lock", "eu", "--reason", NASTY, "--as", NASTY)
    assert code == 0 and f"locked by hand by {SHOWN} at " in stdout and stdout.endswith(
        f": {SHOWN}\n")
    code, _, stderr = run(nasty, sim_config_file, "lock", "eu", "--reason", "again")
    assert code == 1 and f"refused: eu is already locked by hand by {SHOWN}" in stderr
    code, _, stderr = run(nasty, sim_config_file, "deploy", "eu", "--message", NASTY)
    assert code == 1 and f"refused: eu is locked by hand by {SHOWN}" in stderr
    code, stdout, _ = run(nasty, sim_config_file, "resume", "us", "--reason", NASTY)
    assert code == 0 and f"(the hold was: {SHOWN})" in stdout
    code, stdout, _ = run(nasty, sim_config_file, "unlock", "us", "--reason", NASTY)
    assert code == 0 and f"unlocked (was locked by hand by {SHOWN} at " in stdout


def test_validate_shows_a_key_full_of_markup_as_it_is(env: dict[str, str],  # noqa: F811
                                                       sim_config_file: Path) -> None:
    key = "[]x[/] [bold red]boom[/] [link=file:///etc/passwd]x[/link]"
    text = sim_config_file.read_text()
    sim_config_file.write_text(text.replace("region: us-east-1", f'region: us-east-1, "{key}": 1'))
    code, _, stderr = run(env, sim_config_file, "validate")
    assert code == 2 and key in stderr and "1 problem(s) found" in stderr


@pytest.mark.parametrize("error, code, shown", [
    (ConfigError([Problem("p.yaml", 3, "pipelines.us", NASTY)]), 2, "✘ p.yaml:3: pipelines.us: "),
    (cli.BadInput(NASTY), 2, "error: "),
    (cli.Refused(NASTY), 1, "refused: "),
    (RuntimeError(NASTY), 1, "error: RuntimeError: "),
])
def test_the_error_handler_shows_any_error_as_it_is(
        error: Exception, code: int, shown: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHIP_DEBUG", raising=False)
    monkeypatch.setattr(cli.err, "width", 1000)

    def fail(_args: object) -> int:
        raise error

    assert cli._answer(argparse.Namespace(run=fail)) == code
    assert shown + SHOWN in capsys.readouterr().err


def test_the_console_notifier_shows_notices_as_they_are() -> None:
    written = io.StringIO()
    notifier = ConsoleNotifier(Console(file=written, width=1000))
    for level in ("info", "warning", "page"):
        notifier.notify(Notice("us", "halted", NASTY, level=level))
    lines = written.getvalue().splitlines()
    assert lines[0].endswith(f"us ⛔ {SHOWN}") and lines[2].endswith(f"PAGE on-call: {SHOWN}")


def test_the_demo_summary_shows_data_as_it_is(tmp_path: Path, sim_config_file: Path) -> None:
    from orchestrator import demo
    from orchestrator.config import load

    store = store_in_every_state(f"sqlite:///{tmp_path}/demo.db")
    by_state = {r.state: r for r in store.releases("us")}
    lock = store.pipeline_state("us").lock
    outcomes = {k: DeployOutcome(True, NASTY, release=by_state[state]) for k, state in
                (("1", State.DONE), ("2", State.HALTED), ("3", State.ROLLED_BACK),
                 ("4", State.DONE))}
    written = io.StringIO()
    console = Console(file=written, width=1000)
    told = {**outcomes, "refused": DeployOutcome(False, NASTY, lock=lock)}
    assert demo._summary(store, load(sim_config_file), told, console) == 0
    assert f"Refused while locked: {SHOWN}" in written.getvalue()
    assert f"🔒 {SHOWN}: {SHOWN}" in written.getvalue()
    untold = {**outcomes, "refused": DeployOutcome(False, NASTY)}
    assert demo._summary(store, load(sim_config_file), untold, console) == 1
    assert "the deploy while locked was not refused" in written.getvalue()


BAD_NUMBERS = [
    (["rollback", "us", "--to", str(10**30)], "argument --to: 1000000000000000000000000000000 "
     "is out of range: a release number is 1 to 2147483647"),
    (["rollback", "us", "--to", "0"], "argument --to: 0 is out of range"),
    (["rollback", "us", "--to", "seven"], "argument --to: 'seven' is not a whole number"),
    (["rollback", "us", "--minutes-ago", "nan"], "argument --minutes-ago: nan is out of range"),
    (["rollback", "us", "--minutes-ago", "inf"], "argument --minutes-ago: inf is out of range"),
    (["rollback", "us", "--minutes-ago", "1e400"], "argument --minutes-ago: 1e400 is out of"),
    (["rollback", "us", "--minutes-ago=-1"], "argument --minutes-ago: -1 is out of range"),
    (["events", "us", "--release", str(2**31)], "argument --release: 2147483648 is"),
    (["events", "us", "--limit", "0"], "argument --limit: 0 is out of range: a limit is 1 to"),
    (["releases", "us", "--limit", str(10**9)], "argument --limit: 1000000000 is out of range"),
    (["--speed", "nan", "status"], "argument --speed: nan is out of range"),
    (["--speed", "0", "status"], "argument --speed: 0 is out of range"),
    (["serve", "--port", "70000"], "argument --port: 70000 is out of range"),
]


@pytest.mark.parametrize("args, message", BAD_NUMBERS)
def test_a_number_out_of_range_is_bad_input(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_number_out_of_range_is_bad_input_in_the_real_cli(
        env: dict[str, str], sim_config_file: Path) -> None:  # noqa: F811
    for args, message in BAD_NUMBERS:
        code, _, stderr = run(env, sim_config_file, *args)
        assert code == 2 and message in stderr, (args, stderr)


def test_numbers_in_range_are_taken(env: dict[str, str], sim_config_file: Path) -> None:  # noqa: F811
    code, stdout, stderr = run(env, sim_config_file, "events", "us", "--release",
                               str(2**31 - 1), "--limit", "10000")
    assert code == 2 and "us has no release #2147483647" in stderr
    code, stdout, stderr = run(env, sim_config_file, "releases", "us", "--limit", "1", "--json")
    assert code == 0 and stdout.strip() == "[]", stderr
