"""`shared.failures` on real Postgres failures: unreachable (fall back, retry, 503) or the data refused."""

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.embedded import free_port
from shared import failures, tenancy
from shared.db import create_engine


async def _raised(engine: AsyncEngine, sql: str) -> BaseException:
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
    except Exception as exc:
        return exc
    raise AssertionError(f"{sql!r} did not fail")


async def test_nothing_listening_is_unreachable() -> None:
    nowhere = create_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    try:
        refused = await _raised(nowhere, "SELECT 1")
    finally:
        await nowhere.dispose()

    assert isinstance(refused, ConnectionRefusedError)  # bare: SQLAlchemy does not wrap a failed connect
    assert failures.database_unreachable(refused)
    assert not failures.refused_data(refused)


async def test_a_connection_the_server_ended_is_unreachable(engine: AsyncEngine) -> None:
    ended = await _raised(engine, "SELECT pg_terminate_backend(pg_backend_pid())")

    assert failures.database_unreachable(ended)
    assert not failures.refused_data(ended)


async def test_bad_data_and_bad_queries_are_not_outages(engine: AsyncEngine) -> None:
    await tenancy.create_service(engine, "taken")
    duplicate = await _raised(engine, "INSERT INTO services (id, name, created_at) SELECT gen_random_uuid(), name, "
                                      "created_at FROM services")  # fmt: skip
    out_of_range = await _raised(engine, "SELECT 1 / 0")
    typo = await _raised(engine, "SELEKT 1")

    assert failures.refused_data(duplicate)
    assert failures.refused_data(out_of_range)
    assert not any(failures.database_unreachable(exc) for exc in (duplicate, out_of_range, typo))
    assert not failures.refused_data(typo)
