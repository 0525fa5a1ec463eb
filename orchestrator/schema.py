"""The store's tables (SQLAlchemy Core). Migrations in orchestrator/migrations create them;
this module is what the code reads and writes through."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC on every backend (SQLite keeps no zone of its own)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: ship stores aware UTC times only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

pipelines = sa.Table(
    "pipelines", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("next_number", sa.Integer, nullable=False, server_default="1"),
    # The release holding the pipeline (building … promoting); NULL when free.
    sa.Column("in_flight_id", sa.Integer),
    sa.Column("live_id", sa.Integer),
    sa.Column("lock_id", sa.Integer),
    sa.Column("rollback_id", sa.Integer),
    # Why the next promotion is held (the heartbeat has no data), NULL when not held.
    sa.Column("hold_reason", sa.Text),
    sa.Column("stall_paged_at", UtcDateTime),
)

releases = sa.Table(
    "releases", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(64), nullable=False, index=True),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("sha", sa.String(64), nullable=False),
    sa.Column("commits", sa.JSON, nullable=False),
    sa.Column("slug_id", sa.String(80)),
    sa.Column("slug_uri", sa.Text),
    # State name → when the release entered it (pipeline time, ISO 8601).
    sa.Column("stage_times", sa.JSON, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("halted_by", sa.String(16)),  # gate | rollout | lock | hold
    sa.Column("flow_run_id", sa.String(64)),
    sa.Column("created_at", UtcDateTime, nullable=False),
    # Which pre-prod the release uses, of the pipeline's `train.in_flight` (migration 0003).
    sa.Column("preprod_slot", sa.Integer, nullable=False, server_default="0"),
    # How the slug was built: sha, command, duration_s, log, cached (migration 0004).
    sa.Column("build", sa.JSON),
    sa.UniqueConstraint("pipeline", "number", name="uq_release_number"),
)

merges = sa.Table(
    "merges", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(64), nullable=False),
    sa.Column("sha", sa.String(64), nullable=False),
    sa.Column("author", sa.String(200), nullable=False, server_default=""),
    sa.Column("message", sa.Text, nullable=False, server_default=""),
    sa.Column("merged_at", UtcDateTime, nullable=False),
    sa.Column("delivery_id", sa.String(100), index=True),  # index since migration 0002
    sa.Column("release_id", sa.Integer, index=True),
    sa.UniqueConstraint("pipeline", "sha", name="uq_merge_commit"),
)

events = sa.Table(
    "events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("pipeline", sa.String(64), nullable=False, index=True),
    sa.Column("release_id", sa.Integer, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", sa.JSON),
)

gate_results = sa.Table(
    "gate_results", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("release_id", sa.Integer, nullable=False, index=True),
    sa.Column("gate", sa.String(100), nullable=False),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("errored", sa.Boolean, nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("links", sa.JSON, nullable=False),
    sa.Column("output_tail", sa.Text, nullable=False),
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
)

locks = sa.Table(
    "locks", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(64), nullable=False, index=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("auto", sa.Boolean, nullable=False),
    sa.Column("taken_at", UtcDateTime, nullable=False),
    sa.Column("released_at", UtcDateTime),
    sa.Column("released_by", sa.String(200)),
    sa.Column("release_reason", sa.Text),
)

rollbacks = sa.Table(
    "rollbacks", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(64), nullable=False, index=True),
    sa.Column("from_id", sa.Integer, nullable=False),
    sa.Column("to_id", sa.Integer, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("auto", sa.Boolean, nullable=False),
    sa.Column("breach_at", UtcDateTime),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("outcome", sa.String(16), nullable=False),  # running | done | failed
)

rollouts = sa.Table(
    "rollouts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("release_id", sa.Integer, nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),  # promote | rollback | revert
    sa.Column("hosts", sa.Integer, nullable=False),
    sa.Column("started", sa.Integer, nullable=False),
    sa.Column("converged", sa.Integer, nullable=False),
    sa.Column("failed", sa.Integer, nullable=False),
    sa.Column("published_at", UtcDateTime, nullable=False),
    sa.Column("first_request_at", UtcDateTime),
    sa.Column("all_started_at", UtcDateTime),
    sa.Column("half_at", UtcDateTime),
    sa.Column("p95_at", UtcDateTime),
    sa.Column("converged_at", UtcDateTime),
    sa.Column("failures", sa.JSON, nullable=False),
)

# When each release became what the fleet serves: the answer to "what was live at T?".
live_history = sa.Table(
    "live_history", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(64), nullable=False, index=True),
    sa.Column("release_id", sa.Integer, nullable=False),
    sa.Column("since", UtcDateTime, nullable=False),
    sa.Column("via", sa.String(16), nullable=False),  # promote | rollback
)

# What a notifier keeps per release to come back to it: the Slack message (ts and channel)
# that is updated in place, the GitHub deployment that gets statuses.
notice_refs = sa.Table(
    "notice_refs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("release_id", sa.Integer, nullable=False),
    sa.Column("notifier", sa.String(32), nullable=False),
    sa.Column("ref", sa.String(200), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("release_id", "notifier", name="uq_notice_ref"),
)
