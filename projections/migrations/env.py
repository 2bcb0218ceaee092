"""Alembic environment: always online, on the connection ``projections.db.migrate`` hands over.

To add a revision: ``alembic -x`` is not needed; from the repo root run
``.venv/bin/python -c "from projections.db import alembic_config; from alembic import command;
command.revision(alembic_config(), 'what changed')"`` and write its upgrade/downgrade by hand.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from projections.db import metadata

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through projections.db.migrate(engine)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
