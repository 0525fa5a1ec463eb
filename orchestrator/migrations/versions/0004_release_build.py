"""How a release's slug was built (the `git` build): its sha, command, duration, log and
whether the slug was reused.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.add_column("releases", sa.Column("build", sa.JSON))
