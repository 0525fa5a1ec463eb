"""Releases in flight side by side: the pre-prod each release uses (`train.in_flight`).

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("releases", sa.Column("preprod_slot", sa.Integer, nullable=False,
                                        server_default="0"))
