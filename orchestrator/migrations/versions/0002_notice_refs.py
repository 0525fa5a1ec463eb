"""Notice references: per release and notifier, the message or deployment to update
(the Slack message's ts and channel, the GitHub deployment id); and an index to find a
webhook delivery among the merges.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

from orchestrator.schema import UtcDateTime

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "notice_refs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("release_id", sa.Integer, nullable=False),
        sa.Column("notifier", sa.String(32), nullable=False),
        sa.Column("ref", sa.String(200), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.UniqueConstraint("release_id", "notifier", name="uq_notice_ref"),
    )
    op.create_index("ix_merges_delivery_id", "merges", ["delivery_id"])
