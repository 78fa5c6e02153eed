"""Alembic migrations on a database of their own: core schema with data → tenancy schema, and back."""

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db import sqlalchemy_url
from tests.conftest import ROOT, Servers, migrate

DEFAULT_SERVICE_ID = "00000000-0000-7000-8000-000000000001"


def _sql(url: str, *statements: str, autocommit: bool = False) -> list[Any]:
    async def run() -> list[Any]:
        engine = create_async_engine(
            sqlalchemy_url(url), isolation_level="AUTOCOMMIT" if autocommit else "READ COMMITTED"
        )
        results = []
        async with engine.begin() as conn:
            for statement in statements:
                result = await conn.execute(text(statement))
                results.append(result.all() if result.returns_rows else None)
        await engine.dispose()
        return results

    return asyncio.run(run())


@pytest.fixture
def scratch_db(servers: Servers) -> Iterator[str]:
    """A new, empty database on the test server."""
    name = f"migrations_{secrets.token_hex(4)}"
    _sql(servers.database_url, f"CREATE DATABASE {name}", autocommit=True)
    yield servers.database_url.rsplit("/", 1)[0] + f"/{name}"
    _sql(servers.database_url, f"DROP DATABASE {name} WITH (FORCE)", autocommit=True)


def test_core_notifications_get_the_default_service(scratch_db: str) -> None:
    migrate(scratch_db, "0001")
    _sql(
        scratch_db,
        'INSERT INTO notifications (id, "to", created_at, updated_at) '
        "VALUES ('0190b8a4-6c1e-7000-8000-00000000000a', 'old@example.com', now(), now())",
        "INSERT INTO notification_personalization VALUES ('0190b8a4-6c1e-7000-8000-00000000000a', 'band', 'Korn')",
    )

    migrate(scratch_db, "head")

    rows, services, pairs = _sql(
        scratch_db,
        'SELECT "to", service_id::text FROM notifications',
        "SELECT id::text, name FROM services",
        "SELECT key, value FROM notification_personalization",
    )
    assert [tuple(row) for row in rows] == [("old@example.com", DEFAULT_SERVICE_ID)]
    assert [tuple(row) for row in services] == [(DEFAULT_SERVICE_ID, "default")]
    assert [tuple(row) for row in pairs] == [("band", "Korn")]
    (nullable,) = _sql(
        scratch_db,
        "SELECT is_nullable FROM information_schema.columns "
        "WHERE table_name = 'notifications' AND column_name = 'service_id'",
    )
    assert nullable == [("NO",)]


def test_downgrade_and_upgrade_again(scratch_db: str) -> None:
    migrate(scratch_db, "head")
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = scratch_db
    config.attributes["configure_logger"] = False

    command.downgrade(config, "base")
    (tables,) = _sql(scratch_db, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
    assert tables == [(1,)]  # only alembic_version is left
    migrate(scratch_db, "head")
    (tables,) = _sql(
        scratch_db,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
    )
    assert [t for (t,) in tables] == [
        "alembic_version",
        "api_keys",
        "notification_personalization",
        "notification_templates",
        "notifications",
        "services",
        "template_versions",
        "templates",
    ]
