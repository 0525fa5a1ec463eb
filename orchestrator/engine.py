"""Prefect settings ship wants, applied before Prefect is first imported.

Prefect reads its settings from the environment when it is imported, so this module must
be imported first; values already set in the environment win.
"""

from __future__ import annotations

import os
from pathlib import Path

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
