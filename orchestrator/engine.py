"""Prefect settings ship wants, applied before Prefect is first imported.

Prefect reads its settings from the environment when it is imported, so this module must
be imported first; values already set in the environment win.
"""

from __future__ import annotations

import importlib.abc
import os
import subprocess
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path
from types import ModuleType

DEFAULTS = {
    # Keep Prefect's own state (its temporary API's database) inside the project.
    "PREFECT_HOME": str(Path(".ship/prefect").resolve()),
    # No internet here and no telemetry wanted anywhere.
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The temporary API needs ~12 s on a fresh database; 20 s is a thin margin on a busy CI.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # ship reports through its own notifiers; Prefect's run chatter stays out of the way.
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    # The local API's task-run recorder writes one event per transaction by default: after a
    # release's half-dozen task runs, the next flow run then waited ~2 s for SQLite. Batching
    # brings that back to ~0.2 s (bench/release_overhead.py).
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
}

for _name, _value in DEFAULTS.items():
    os.environ.setdefault(_name, _value)
# Prefect creates its home without parents; a missing .ship/ would fail its temporary API.
Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)


# --- Prefect's temporary API dies with the process that started it --------------------------

_TEMPORARY_API_MODULE = "prefect.server.api.server"
_lifelines: list[int] = []  # write ends held until this process ends, however it ends


def _start_temporary_api(server: object) -> subprocess.Popen[bytes]:
    """Start Prefect's temporary API as Prefect would, but through `orchestrator.lifeline`,
    which exits when the pipe's write end closes: when this process dies, even by SIGKILL.
    Prefect's own child is a plain uvicorn that outlives a killed parent (reparented to
    PID 1, ~200 MB each, forever)."""
    from prefect.settings import get_current_settings

    read_end, write_end = os.pipe()  # not inherited by other children (close_fds)
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1",
           **get_current_settings().to_environment_variables(exclude_unset=True)}
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.lifeline", str(read_end), str(server.port)],  # type: ignore[attr-defined]
            env=env, pass_fds=(read_end,))
    finally:
        os.close(read_end)
    _lifelines.append(write_end)
    return process


def _tie_to_this_process(module: ModuleType) -> None:
    server_class = getattr(module, "SubprocessASGIServer", None)
    if server_class is None or not hasattr(server_class, "_run_uvicorn_command"):
        raise RuntimeError(f"{_TEMPORARY_API_MODULE}.SubprocessASGIServer._run_uvicorn_command "
                           "is gone: check how ship starts Prefect's temporary API")
    server_class._run_uvicorn_command = _start_temporary_api


class _TieOnImport(importlib.abc.MetaPathFinder):
    """Patches Prefect's temporary API server class when Prefect first imports it (lazily,
    from whichever client needs the API), so every way ship runs flows is covered."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != _TEMPORARY_API_MODULE:
            return None
        spec = PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        load = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            load(module)
            _tie_to_this_process(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if not any(isinstance(finder, _TieOnImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _TieOnImport())


def keep_sigterm() -> None:
    """Before flows run in this process: Prefect's engine puts its own SIGTERM handler in
    front of the process's while a flow runs, raising TerminationSignal wherever the main
    thread is (often outside any flow, where nothing of Prefect's catches it). ship's
    processes decide what SIGTERM means (`ship serve` drains; a command stops with one line,
    its flows recorded as crashed), so the engine's bridge is turned off here. Runs of
    deployments served in child processes keep theirs."""
    import contextlib

    import prefect.flow_engine

    if not hasattr(prefect.flow_engine, "capture_sigterm"):
        raise RuntimeError("prefect.flow_engine.capture_sigterm is gone: check how ship "
                           "handles SIGTERM against this Prefect version")
    prefect.flow_engine.capture_sigterm = contextlib.nullcontext  # type: ignore[assignment]
