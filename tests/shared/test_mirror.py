"""The Redis copy of a Postgres table: loaded once when incomplete, read in one round trip once complete."""

import asyncio
from collections.abc import Awaitable
from typing import cast

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.mirror import Mirror

HASH = "test:mirror"


async def test_a_burst_of_misses_on_an_incomplete_copy_loads_it_once_then_answers_from_redis(
    engine: AsyncEngine, redis: Redis
) -> None:
    loads = 0

    async def copy(engine: AsyncEngine, redis: Redis) -> int:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)  # other reads arrive while it loads
        await cast(Awaitable[int], redis.hset(HASH, "present", "1"))
        return 1

    mirror = Mirror(HASH, "complete", copy, "test mirror loaded: %d rows")
    found = await asyncio.gather(*(mirror.get(engine, redis, field) for field in ["present", "absent"] * 10))

    assert found == [b"1", None] * 10
    assert loads == 1
    assert await redis.hget(HASH, "complete") == b"1"
    assert await mirror.read(engine, redis, lambda pipe: pipe.hget(HASH, "present")) == [b"1"]
    assert loads == 1


async def test_write_through_writes_before_the_commit_and_the_reread_row_after(
    engine: AsyncEngine, redis: Redis
) -> None:
    mirror = Mirror(HASH, "complete", lambda engine, redis: asyncio.sleep(0, 0), "unused: %d")
    written: list[int] = []

    async def write(value: int) -> None:
        written.append(value)

    async def change(conn: AsyncConnection) -> int:
        return int((await conn.execute(text("SELECT 1"))).scalar_one())

    async def committed(conn: AsyncConnection) -> int:
        return int((await conn.execute(text("SELECT 2"))).scalar_one())

    assert await mirror.write_through(engine, change, write, committed) == 1
    assert written == [1, 2]
    assert await mirror.write_through(engine, change, write) == 1
    assert written == [1, 2, 1, 1]
