"""Engine factory: the plain DATABASE_URL as an async SQLAlchemy engine on asyncpg, and the migration runner.

Engines are built in lifespans and startup hooks, never at import time.
"""

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def sqlalchemy_url(database_url: str, driver: str = "asyncpg") -> str:
    """Return DATABASE_URL with the SQLAlchemy driver name added (`postgresql+asyncpg://...`)."""
    scheme, sep, rest = database_url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        raise ValueError("DATABASE_URL must look like postgresql://user:pass@host:port/db")
    return f"postgresql+{driver}://{rest}"


def create_engine(database_url: str, pool_size: int = 5) -> AsyncEngine:
    """Create the async engine; connections are opened lazily and checked before use."""
    return create_async_engine(
        sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def upgrade_database(database_url: str, revision: str = "head") -> None:
    """Apply the Alembic migrations up to `revision` (for tests and benchmarks; production runs `alembic`).

    Not from a running event loop: the migration environment runs its own.
    """
    from alembic import command
    from alembic.config import Config

    config = Config(str(Path(__file__).resolve().parent.parent / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    command.upgrade(config, revision)
