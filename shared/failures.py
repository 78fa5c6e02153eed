"""What a database failure means: Postgres unreachable (wait, fall back, retry) or the data refused (do not retry).

The one place that tells them apart, for every caller that touches Postgres (the API's fallbacks and 503s, the
drain's retries and dead letters). Postgres's failures reach callers in several shapes::

    OSError (ConnectionRefusedError, socket.gaierror, TimeoutError)   connect failed: SQLAlchemy does not wrap it
    asyncpg.PostgresError with a SQLSTATE of class 08, 53 or 57       the server cannot serve (shutdown, too many
                                                                       connections, starting up)
    asyncpg.InterfaceError                                            the connection is closed or broken
    sqlalchemy.exc.TimeoutError                                       the connection pool is exhausted
    sqlalchemy.exc.DBAPIError(.orig = any of the above)               the same, wrapped; `connection_invalidated`
    sqlalchemy.exc.OperationalError, InterfaceError                   the driver's own "cannot talk to the server"

Anything else (a SQLSTATE of class 22 or 23 above all) is about the data or the query, and is raised as it is.
"""

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

__all__ = ["DATA_SQLSTATE_CLASSES", "UNAVAILABLE_SQLSTATE_CLASSES", "database_unreachable", "refused_data", "sqlstate"]

#: SQLSTATE classes that mean "Postgres cannot serve now": connection exceptions, insufficient resources (too many
#: connections), operator intervention (shutdown, starting up, recovery).
UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")
#: SQLSTATE classes that say the data itself cannot be stored: 22 data exception, 23 integrity constraint violation.
DATA_SQLSTATE_CLASSES = ("22", "23")


def sqlstate(exc: BaseException) -> str:
    """Return the SQLSTATE of a Postgres error, raw asyncpg or wrapped by SQLAlchemy ("" if it has none)."""
    if isinstance(exc, DBAPIError):
        exc = exc.orig or exc
    code = getattr(exc, "sqlstate", None)
    return code if isinstance(code, str) else ""


def database_unreachable(exc: BaseException) -> bool:
    """True when `exc` says Postgres cannot be reached or cannot serve now (not what was asked of it)."""
    if isinstance(exc, OSError | PoolTimeoutError | asyncpg.InterfaceError | OperationalError | InterfaceError):
        return True
    if sqlstate(exc)[:2] in UNAVAILABLE_SQLSTATE_CLASSES:
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or (exc.orig is not None and database_unreachable(exc.orig))
    return False


def refused_data(exc: BaseException) -> bool:
    """True when Postgres refused the data itself (SQLSTATE class 22 or 23): the same data will fail again."""
    return sqlstate(exc)[:2] in DATA_SQLSTATE_CLASSES
