"""The projection contract suite runs every test on SQLite and on a real PostgreSQL server.

PostgreSQL: ``ABSYNC_TEST_DATABASE_URL`` (a server URL whose user may create databases) if set,
else the local server of ``deploy/local/postgres.sh`` (started if needed, left running). Each
test gets its own fresh database, dropped afterwards.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from projections.db import engine_from_url, migrate

REPO = Path(__file__).resolve().parents[2]
POSTGRES_SH = REPO / "deploy" / "local" / "postgres.sh"


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    url = os.environ.get("ABSYNC_TEST_DATABASE_URL")
    if url:
        return url
    subprocess.run([str(POSTGRES_SH), "start"], check=True, stdout=subprocess.DEVNULL)
    return subprocess.run(
        [str(POSTGRES_SH), "url"], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each back-end."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'view.db'}"
        return
    server = sa.make_url(request.getfixturevalue("postgres_server_url"))
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """The database at the newest schema."""
    engine = engine_from_url(database_url)
    migrate(engine)
    yield engine
    engine.dispose()
