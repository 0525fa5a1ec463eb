"""Fixtures shared by the whole suite: one Prefect test API per session, stores on SQLite
and on PostgreSQL, and a small simulated pipelines config."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import engine  # noqa: F401 - Prefect settings before Prefect loads

PG_ADMIN_URL = os.environ.get("SHIP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One Prefect test API for the session (entering the harness costs ~12 s). Yields its
    URL, for subprocesses to share it through PREFECT_API_URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


def _postgres_available() -> str | None:
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as error:
        return f"{type(error).__name__}: {error}"


def fresh_postgres_url() -> str:
    """A new, empty database on the local PostgreSQL server, for one test."""
    import sqlalchemy as sa

    trouble = _postgres_available()
    if trouble:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI but unreachable at {PG_ADMIN_URL}: "
                        f"{trouble}")
        pytest.skip(f"LOUD SKIP: no PostgreSQL at {PG_ADMIN_URL} ({trouble}); the store's "
                    "PostgreSQL tests did not run")
    name = f"ship_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_postgres(url: str) -> None:
    import sqlalchemy as sa

    name = url.rsplit("/", 1)[1]
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/ship.db"
        return
    url = fresh_postgres_url()
    try:
        yield url
    finally:
        drop_postgres(url)


# A whole pipeline in a few pipeline seconds: zero-length stages, a tiny watch.
SIM_PIPELINES = """
version: 1
x-defaults: &defaults
  repo: {name: example/chat}
  build: {type: sim}
  ci: {type: sim, name: ci}
  gates:
    - {type: sim, name: boot}
    - {type: sim, name: smoke}
  preprod: {fleet: {driver: sim, hosts: 1, fetch: 0, worker_boot: 1, drain: 0, workers: 1}}
  fleet: {driver: sim, hosts: 50, fetch: 1, worker_boot: 1, drain: 1, workers: 2, seed: 7}
  rollout: {stagger: 5s}
  heartbeat:
    source: {type: sim, rate_per_min: 1000, noise: 0.02}
    window: 10s
    watch: 60s
    metrics:
      - {name: messages_created, query: "messages.created{region:{region}}",
         baseline: {kind: trailing, window: 120s}, min_ratio: 0.6, windows: 2}
  rollback: {auto: true, lookback_minutes: 1}
  stall: {halts: 3}
  notify: {console: false, links: {Logs: "https://logs.example.com/{region}/{release}"}}
pipelines:
  us: {<<: *defaults, region: us-east-1}
  eu: {<<: *defaults, region: eu-west-1}
"""


@pytest.fixture
def sim_config_file(tmp_path: Path) -> Path:
    path = tmp_path / "pipelines.yaml"
    path.write_text(SIM_PIPELINES)
    return path
