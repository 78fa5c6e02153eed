"""Alembic environment: migrates the database DATABASE_URL names (online, over asyncpg).

Waits up to CONNECT_WAIT_SECONDS for Postgres to take connections (the compose `migrate` service may start while
Postgres still answers only on its socket, setting itself up).
"""

import asyncio
import logging
import time
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from shared.db import sqlalchemy_url
from shared.models import metadata
from shared.settings import get_settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = metadata
logger = logging.getLogger("alembic.env")

#: How long a migration waits for Postgres to accept connections before it fails.
CONNECT_WAIT_SECONDS = 90.0
#: SQLSTATE 57P03 cannot_connect_now: the server is starting up (or shutting down); worth waiting for.
CANNOT_CONNECT_NOW = "57P03"


def _not_ready_yet(exc: BaseException) -> bool:
    """True for a refused/unreachable connection or a server still starting: not for a wrong password or name."""
    if isinstance(exc, DBAPIError):
        return getattr(exc.orig, "sqlstate", None) == CANNOT_CONNECT_NOW or isinstance(exc.orig, OSError)
    return isinstance(exc, OSError)


async def _connect_when_ready(engine: AsyncEngine) -> AsyncConnection:
    deadline = time.monotonic() + CONNECT_WAIT_SECONDS
    while True:
        try:
            return await engine.connect()
        except (OSError, DBAPIError) as exc:
            if not _not_ready_yet(exc) or time.monotonic() > deadline:
                raise
            logger.info("Postgres does not take connections yet (%s); trying again", exc.__class__.__name__)
            await asyncio.sleep(1.0)


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    url = config.attributes.get("database_url") or get_settings().require_database_url()
    engine = create_async_engine(sqlalchemy_url(url), poolclass=NullPool)
    connection = await _connect_when_ready(engine)
    try:
        await connection.run_sync(_run)
    finally:
        await connection.close()
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `alembic upgrade head` against a database")
asyncio.run(_run_online())
