"""A Redis copy of a Postgres table, with a field that says the copy is complete.

Postgres is the record. A change writes Redis before its transaction commits (a Redis that cannot be reached fails
the change) and again after it (`Mirror.write_through`), so Redis never keeps what Postgres no longer holds. Once
the copy is complete its hash carries the marker field, and what the copy lacks Postgres lacks too: readers never
ask Postgres. A hash without the marker (a Redis without persistence restarted) is loaded again from Postgres on the
first read that misses, once per process at a time.
"""

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Mirror:
    """The Redis copy of one table: the hash `hash_key`, complete once it holds the field `complete_field`.

    `copy` writes every row into Redis and returns how many; `loaded` is the log line that follows (one `%d`).
    """

    def __init__(
        self, hash_key: str, complete_field: str, copy: Callable[[AsyncEngine, Redis], Awaitable[int]], loaded: str
    ) -> None:
        self.hash_key = hash_key
        self.complete_field = complete_field
        self._copy = copy
        self._loaded = loaded
        #: One load at a time per event loop: a burst of misses while the hash is incomplete loads it once.
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

    async def load(self, engine: AsyncEngine, redis: Redis) -> int:
        """Copy every row into Redis, then mark the copy complete; return what the copy counted."""
        copied = await self._copy(engine, redis)
        await cast(Awaitable[int], redis.hset(self.hash_key, self.complete_field, "1"))
        logger.info(self._loaded, copied)
        return copied

    async def get(self, engine: AsyncEngine, redis: Redis, field: str) -> bytes | None:
        """Return the value of `field` in the hash, None if the complete copy lacks it (one HMGET while complete)."""

        async def attempt() -> tuple[bool, bytes | None]:
            found, complete = await cast(
                Awaitable[list[bytes | None]], redis.hmget(self.hash_key, [field, self.complete_field])
            )
            return found is not None or complete is not None, found

        return await self._once_complete(engine, redis, attempt)

    async def read(self, engine: AsyncEngine, redis: Redis, commands: Callable[[Pipeline], object]) -> list[Any] | None:
        """Return the replies of the read `commands` queue, run in one round trip with the marker once complete."""

        async def attempt() -> tuple[bool, list[Any]]:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.hget(self.hash_key, self.complete_field)
                commands(pipe)
                complete, *replies = await pipe.execute()
            return complete is not None, replies

        return await self._once_complete(engine, redis, attempt)

    async def _once_complete(
        self, engine: AsyncEngine, redis: Redis, attempt: Callable[[], Awaitable[tuple[bool, T]]]
    ) -> T | None:
        """Return what `attempt` read once it says it read a complete copy (loading it first if not)."""
        for _ in range(2):
            decided, found = await attempt()
            if decided:
                return found
            lock = self._locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
            async with lock:  # unless another task of this process just loaded it
                if not await cast(Awaitable[bool], redis.hexists(self.hash_key, self.complete_field)):
                    await self.load(engine, redis)
        return None

    async def write_through(
        self,
        engine: AsyncEngine,
        change: Callable[[AsyncConnection], Awaitable[R | None]],
        write: Callable[[R], Awaitable[None]],
        committed: Callable[[AsyncConnection], Awaitable[R | None]] | None = None,
    ) -> R | None:
        """Make `change` in Postgres and `write` its row to Redis before the commit and again after it.

        After the commit a load racing with the change may have written the old row back. `committed`, if given,
        reads the row again under its lock for that second write: of concurrent changes to one row, the last to
        write Redis then writes the last committed one. Returns the changed row, or None (nothing written).
        """
        async with engine.begin() as conn:
            row = await change(conn)
            if row is None:
                return None
            await write(row)  # fails the change (rollback) if Redis cannot be told
        if committed is None:
            await write(row)
            return row
        async with engine.begin() as conn:
            again = await committed(conn)
            if again is not None:
                await write(again)
        return row
