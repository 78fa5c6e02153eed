"""Per-service rate limits: set by the admin API and the CLI, read by the API on its write path.

A service's own limit (notifications per minute; 0: unlimited) is kept in `services.rate_limit_per_minute`, NULL
meaning the RATE_LIMIT_PER_MINUTE default. As with the key registry (`shared.tenancy`), Postgres is the record and a
Redis hash (`keys.RATE_LIMITS_HASH`) mirrors the services that have a limit of their own, so that the API learns
a limit without Postgres: setting one writes the hash before the row commits (a Redis that cannot be reached fails
the change), and a hash without its `complete` field (a Redis without persistence restarted) is loaded again from
Postgres on the first lookup. The tokens themselves are counted by the group-commit script (`api.writer`).
"""

import asyncio
import logging
import weakref
from collections.abc import Awaitable
from typing import Any, cast
from uuid import UUID

from redis.asyncio import Redis
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import keys, queries

logger = logging.getLogger(__name__)

_load_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


async def set_rate_limit(
    engine: AsyncEngine, redis: Redis, service_id: UUID, per_minute: int | None
) -> Row[Any] | None:
    """Set a service's own limit (None: back to the default); return the service, or None if there is none.

    Redis learns the change before it commits; should the commit fail, Redis holds a limit nobody set, until the
    hash is loaded again (the lookups of the API processes then also see it for up to AUTH_CACHE_SECONDS). After
    the commit Redis is written again, under the service row's lock, with the limit committed by then: concurrent
    changes of one limit take that lock in turn, so the last one to write Redis writes the last committed limit.
    (Writing our own limit again after the commit let a slower, earlier change's write land last: Redis ≠ Postgres.)
    """
    async with engine.begin() as conn:
        service = await queries.set_rate_limit(conn, service_id, per_minute)
        if service is None:
            return None
        await _mirror(redis, service_id, per_minute)
    # again after the commit (a load of the hash racing with us may have written the old limit back), in turn
    async with engine.begin() as conn:
        committed = await queries.lock_rate_limit(conn, service_id)
        if committed is not None:
            await _mirror(redis, service_id, committed.rate_limit_per_minute)
    return service


async def _mirror(redis: Redis, service_id: UUID, per_minute: int | None) -> None:
    if per_minute is None:
        await cast(Awaitable[int], redis.hdel(keys.RATE_LIMITS_HASH, str(service_id)))
    else:
        await cast(Awaitable[int], redis.hset(keys.RATE_LIMITS_HASH, str(service_id), str(per_minute)))


async def load_rate_limits(engine: AsyncEngine, redis: Redis) -> int:
    """Copy every service's own limit into Redis, then mark the hash complete; return how many there are."""
    async with engine.connect() as conn:
        own = await queries.own_rate_limits(conn)
    mapping: dict[str, int | str] = {str(row.id): row.rate_limit_per_minute for row in own}
    mapping[keys.RATE_LIMITS_COMPLETE_FIELD] = "1"
    await cast(Awaitable[int], redis.hset(keys.RATE_LIMITS_HASH, mapping=mapping))
    logger.info("rate limits loaded into Redis from Postgres: %d services with a limit of their own", len(own))
    return len(own)


async def own_rate_limit(engine: AsyncEngine, redis: Redis, service_id: UUID) -> int | None:
    """Return a service's own limit, or None when it has none (the default applies).

    One Redis round trip while the hash is complete; otherwise it is loaded from Postgres first (once per process
    at a time).
    """
    for _ in range(2):
        found, complete = await cast(
            Awaitable[list[bytes | None]],
            redis.hmget(keys.RATE_LIMITS_HASH, [str(service_id), keys.RATE_LIMITS_COMPLETE_FIELD]),
        )
        if found is not None:
            return int(found)
        if complete is not None:
            return None
        lock = _load_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
        async with lock:
            if not await cast(Awaitable[bool], redis.hexists(keys.RATE_LIMITS_HASH, keys.RATE_LIMITS_COMPLETE_FIELD)):
                await load_rate_limits(engine, redis)
    return None
