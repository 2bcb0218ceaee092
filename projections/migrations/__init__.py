"""Alembic migrations of the projection database (run by ``projections.db.migrate``)."""
