"""The `ship` command line, run as a real subprocess: exit codes, messages without
tracebacks, JSON output, and releases driven through Prefect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def ship(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SHIP_DATABASE_URL": f"sqlite:///{tmp_path}/ship.db",
            "SHIP_USER": "tester", "PYTHONPATH": str(ROOT), "COLUMNS": "200"}


def test_help_lists_the_commands_and_exit_codes(env: dict[str, str], tmp_path: Path) -> None:
    result = ship("--help", env=env, cwd=tmp_path)
    assert result.returncode == 0
    for word in ("demo", "deploy", "status", "releases", "rollback", "lock", "unlock",
                 "resume", "validate", "schema", "exit codes", "refused", "bad input"):
        assert word in result.stdout


def test_validate_accepts_the_root_file(env: dict[str, str]) -> None:
    result = ship("validate", env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "3 pipeline(s)" in result.stdout


def test_validate_accepts_the_service_example_and_refuses_an_env_the_agent_owns(
        env: dict[str, str], tmp_path: Path) -> None:
    example = ROOT / "examples/service/pipelines.yaml"
    result = ship("validate", str(example), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "service (local)" in result.stdout
    bad = tmp_path / "service.yaml"
    text = example.read_text().replace("env: {PYTHONPATH: vendor}", "env: {SHIP_SHA: fixed}")
    bad.write_text(text)
    result = ship("validate", str(bad), env=env, cwd=tmp_path)
    line = next(i for i, x in enumerate(text.splitlines(), 1) if "SHIP_SHA: fixed" in x)
    assert result.returncode == 2
    assert f"service.yaml:{line}: pipelines.service.app.env" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_validate_reports_every_problem_with_line_and_no_traceback(
        env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (ROOT / "pipelines.yaml").read_text()
    text = text.replace("stagger: 2m", "stagerr: 2m").replace("hosts: 400", "hosts: lots")
    bad.write_text(text)
    result = ship("validate", str(bad), env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    line = next(i for i, x in enumerate(text.splitlines(), 1) if "stagerr" in x)
    assert f"bad.yaml:{line}:" in result.stderr
    assert "rollout.stagerr" in result.stderr and "fleet.hosts" in result.stderr
    assert "4 problem(s)" in result.stderr  # the shared anchor is wrong for all three


def test_schema_is_json(env: dict[str, str], tmp_path: Path) -> None:
    result = ship("schema", env=env, cwd=tmp_path)
    assert result.returncode == 0
    assert json.loads(result.stdout)["title"] == "ship pipelines.yaml"


def test_an_unknown_pipeline_is_bad_input(env: dict[str, str], sim_config_file: Path) -> None:
    result = ship("-c", str(sim_config_file), "status", "mars", env=env,
                  cwd=sim_config_file.parent)
    assert result.returncode == 2
    assert "unknown pipeline 'mars'" in result.stderr and "Traceback" not in result.stderr


def test_lock_twice_is_refused_and_unlock_needs_a_reason(env: dict[str, str],
                                                          sim_config_file: Path) -> None:
    cfg = ["-c", str(sim_config_file)]
    cwd = sim_config_file.parent
    assert ship(*cfg, "lock", "us", "--reason", "incident 7", env=env, cwd=cwd).returncode == 0
    again = ship(*cfg, "lock", "us", "--reason", "me too", "--as", "bob", env=env, cwd=cwd)
    assert again.returncode == 1 and "tester" in again.stderr and "incident 7" in again.stderr
    assert ship(*cfg, "unlock", "us", env=env, cwd=cwd).returncode == 2  # --reason required
    status = json.loads(ship(*cfg, "status", "us", "--json", env=env, cwd=cwd).stdout)
    assert status["locked"] and status["lock"]["owner"] == "tester"
    assert ship(*cfg, "unlock", "us", "--reason", "over", env=env, cwd=cwd).returncode == 0
    assert ship(*cfg, "unlock", "us", "--reason", "twice", env=env, cwd=cwd).returncode == 1
    events = json.loads(ship(*cfg, "events", "us", "--json", env=env, cwd=cwd).stdout)
    assert [e["kind"] for e in events] == ["lock", "unlock"]


def test_deploy_releases_rollback_and_refusal_while_locked(
        env: dict[str, str], sim_config_file: Path, prefect_api: str) -> None:
    env = {**env, "PREFECT_API_URL": prefect_api}
    cfg = ["-c", str(sim_config_file), "--speed", "60"]
    cwd = sim_config_file.parent
    for n in (1, 2):
        result = ship(*cfg, "deploy", "us", "--sha", f"{n:040x}", "--message", f"change {n}",
                      env=env, cwd=cwd)
        assert result.returncode == 0, result.stderr
        assert f"us#{n}: done" in result.stdout
    releases = json.loads(ship(*cfg, "releases", "us", "--json", env=env, cwd=cwd).stdout)
    assert [(r["number"], r["state"]) for r in releases] == [(2, "done"), (1, "done")]
    assert {g["gate"] for g in releases[0]["gates"]} == {"boot", "smoke", "ci"}
    assert releases[0]["commits"][0]["author"] == "tester"

    missing = ship(*cfg, "rollback", "us", "--to", "9", env=env, cwd=cwd)
    assert missing.returncode == 2 and "no release #9" in missing.stderr
    back = ship(*cfg, "rollback", "us", "--to", "1", "--reason", "bad copy", env=env, cwd=cwd)
    assert back.returncode == 0, back.stderr
    status = json.loads(ship(*cfg, "status", "us", "--json", env=env, cwd=cwd).stdout)
    assert status["live"] == 1 and status["lock"]["owner"] == "tester"

    refused = ship(*cfg, "deploy", "us", "--sha", f"{3:040x}", env=env, cwd=cwd)
    assert refused.returncode == 1
    assert "locked by hand by tester" in refused.stderr and "bad copy" in refused.stderr
    dora = json.loads(ship(*cfg, "dora", "us", "--json", env=env, cwd=cwd).stdout)
    assert dora[0]["shipped"] == 2 and dora[0]["rolled_back"] == 1


def test_a_bad_sha_is_bad_input(env: dict[str, str], sim_config_file: Path) -> None:
    result = ship("-c", str(sim_config_file), "deploy", "us", "--sha", "not-a-sha", env=env,
                  cwd=sim_config_file.parent)
    assert result.returncode == 2 and "not a commit id" in result.stderr


def _hostile_files() -> dict[str, tuple[bytes, int]]:
    """Files `ship validate` once hung on, ran out of memory on or answered with a bare
    exception name: file name → (bytes, line of the problem)."""
    valid = (ROOT / "pipelines.yaml").read_text()
    def line(of: str) -> int:
        return next(i for i, x in enumerate(valid.splitlines(), 1) if of in x)

    stagger = line("stagger:")
    laughs = "".join([f"x-l0: &l0 [{', '.join(['lol'] * 10)}]\n"] + [
        f"x-l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]\n" for n in range(1, 9)])
    return {
        "nan.yaml": (valid.replace("stagger: 2m", "stagger: .nan").encode(), stagger),
        "overflow.yaml": (valid.replace("stagger: 2m", 'stagger: "1e400m"').encode(), stagger),
        "stagger.yaml": (valid.replace("stagger: 2m", "stagger: 1h").encode(), stagger),
        "laughs.yaml": ((laughs + valid).encode(), 5),
        "deep.yaml": (("x-deep: " + "[" * 10_000 + "]" * 10_000 + "\n" + valid).encode(), 1),
        "key.yaml": (("? [a, b]\n: x\n" + valid).encode(), 1),
        "null.yaml": (valid.replace("version: 1", "version: \0").encode(), line("version:")),
        "utf16.yaml": (valid.encode("utf-16"), 1),
    }


@pytest.mark.parametrize("name", sorted(_hostile_files()))
def test_validate_refuses_hostile_files_with_their_line(
        env: dict[str, str], tmp_path: Path, name: str) -> None:
    data, line = _hostile_files()[name]
    (tmp_path / name).write_bytes(data)
    env.pop("SHIP_DEBUG", None)
    result = ship("validate", name, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert f"{name}:{line}:" in result.stderr, result.stderr
    *problems, summary = result.stderr.splitlines()
    assert summary == f"{len(problems)} problem(s) found"
    assert all(p.startswith(f"✘ {name}:") for p in problems), result.stderr  # one line each


def test_validate_refuses_a_file_over_the_limit_before_reading_it_all(
        env: dict[str, str], tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as file:
        file.truncate(50 << 20)  # 50 MB of null bytes, written sparse
    env.pop("SHIP_DEBUG", None)
    result = ship("validate", "big.yaml", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "big.yaml: the file is too large (52,428,800 bytes; the limit is 1,048,576" \
        in result.stderr


def test_problems_are_not_read_as_markup(env: dict[str, str], tmp_path: Path) -> None:
    text = (ROOT / "pipelines.yaml").read_text().replace("stagger: 2m", "'[/]stagger': 2m")
    (tmp_path / "markup.yaml").write_text(text)
    result = ship("validate", "markup.yaml", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "rollout.[/]stagger: unknown field" in result.stderr
