"""The initial store: pipelines, releases, merges, events, gate results, locks, rollbacks,
rollouts and the live history.

A migration is a frozen snapshot: it spells its tables out rather than importing
orchestrator.schema, so later changes to the schema never rewrite history.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

from orchestrator.schema import UtcDateTime

revision = "0001"
down_revision = None


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer, primary_key=True, autoincrement=True)


def _pipeline() -> sa.Column:
    return sa.Column("pipeline", sa.String(64), nullable=False, index=True)


def upgrade() -> None:
    op.create_table(
        "pipelines",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("next_number", sa.Integer, nullable=False, server_default="1"),
        sa.Column("in_flight_id", sa.Integer),
        sa.Column("live_id", sa.Integer),
        sa.Column("lock_id", sa.Integer),
        sa.Column("rollback_id", sa.Integer),
        sa.Column("hold_reason", sa.Text),
        sa.Column("stall_paged_at", UtcDateTime),
    )
    op.create_table(
        "releases", _id(), _pipeline(),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("sha", sa.String(64), nullable=False),
        sa.Column("commits", sa.JSON, nullable=False),
        sa.Column("slug_id", sa.String(80)),
        sa.Column("slug_uri", sa.Text),
        sa.Column("stage_times", sa.JSON, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("halted_by", sa.String(16)),
        sa.Column("flow_run_id", sa.String(64)),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.UniqueConstraint("pipeline", "number", name="uq_release_number"),
    )
    op.create_table(
        "merges", _id(),
        sa.Column("pipeline", sa.String(64), nullable=False),
        sa.Column("sha", sa.String(64), nullable=False),
        sa.Column("author", sa.String(200), nullable=False, server_default=""),
        sa.Column("message", sa.Text, nullable=False, server_default=""),
        sa.Column("merged_at", UtcDateTime, nullable=False),
        sa.Column("delivery_id", sa.String(100)),
        sa.Column("release_id", sa.Integer, index=True),
        sa.UniqueConstraint("pipeline", "sha", name="uq_merge_commit"),
    )
    op.create_table(
        "events", _id(), _pipeline(),
        sa.Column("at", UtcDateTime, nullable=False),
        sa.Column("release_id", sa.Integer, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", sa.JSON),
    )
    op.create_table(
        "gate_results", _id(),
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
    op.create_table(
        "locks", _id(), _pipeline(),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("auto", sa.Boolean, nullable=False),
        sa.Column("taken_at", UtcDateTime, nullable=False),
        sa.Column("released_at", UtcDateTime),
        sa.Column("released_by", sa.String(200)),
        sa.Column("release_reason", sa.Text),
    )
    op.create_table(
        "rollbacks", _id(), _pipeline(),
        sa.Column("from_id", sa.Integer, nullable=False),
        sa.Column("to_id", sa.Integer, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("auto", sa.Boolean, nullable=False),
        sa.Column("breach_at", UtcDateTime),
        sa.Column("started_at", UtcDateTime, nullable=False),
        sa.Column("finished_at", UtcDateTime),
        sa.Column("outcome", sa.String(16), nullable=False),
    )
    op.create_table(
        "rollouts", _id(),
        sa.Column("release_id", sa.Integer, nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("hosts", sa.Integer, nullable=False),
        sa.Column("started", sa.Integer, nullable=False),
        sa.Column("converged", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("published_at", UtcDateTime, nullable=False),
        *(sa.Column(name, UtcDateTime) for name in (
            "first_request_at", "all_started_at", "half_at", "p95_at", "converged_at")),
        sa.Column("failures", sa.JSON, nullable=False),
    )
    op.create_table(
        "live_history", _id(), _pipeline(),
        sa.Column("release_id", sa.Integer, nullable=False),
        sa.Column("since", UtcDateTime, nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
    )
