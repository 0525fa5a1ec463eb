"""Alembic environment: the store hands over its connection (see orchestrator.store)."""

from alembic import context

from orchestrator.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
