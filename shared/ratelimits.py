"""Per-service rate limits: set by the admin API and the CLI, read by the API on its write path.

A service's own limit (notifications per minute; 0: unlimited) is kept in `services.rate_limit_per_minute`, NULL
meaning the RATE_LIMIT_PER_MINUTE default, and mirrored in Redis (`keys.RATE_LIMITS_HASH`, a `shared.mirror`) so
that the API learns a limit without Postgres. The tokens themselves are counted by the group-commit script.
"""

from collections.abc import Awaitable
from typing import Any, cast
from uuid import UUID

from redis.asyncio import Redis
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import keys, mirror, queries


async def _copy_rate_limits(engine: AsyncEngine, redis: Redis) -> int:
    """Copy every service's own limit into Redis; return how many there are."""
    async with engine.connect() as conn:
        own = await queries.own_rate_limits(conn)
    if own:
        mapping = {str(row.id): row.rate_limit_per_minute for row in own}
        await cast(Awaitable[int], redis.hset(keys.RATE_LIMITS_HASH, mapping=mapping))
    return len(own)


#: `keys.RATE_LIMITS_HASH`, complete with `keys.RATE_LIMITS_COMPLETE_FIELD`.
RATE_LIMITS = mirror.Mirror(
    keys.RATE_LIMITS_HASH,
    keys.RATE_LIMITS_COMPLETE_FIELD,
    _copy_rate_limits,
    "rate limits loaded into Redis from Postgres: %d services with a limit of their own",
)


async def set_rate_limit(
    engine: AsyncEngine, redis: Redis, service_id: UUID, per_minute: int | None
) -> Row[Any] | None:
    """Set a service's own limit (None: back to the default); return the service, or None if there is none.

    Redis learns the change before it commits; should the commit fail, Redis holds a limit nobody set, until the
    hash is loaded again (the lookups of the API processes then also see it for up to AUTH_CACHE_SECONDS). After
    the commit Redis is written again, under the service row's lock, with the limit committed by then: concurrent
    changes of one limit take that lock in turn, so the last one to write Redis writes the last committed limit.
    """
    return await RATE_LIMITS.write_through(
        engine,
        lambda conn: queries.set_rate_limit(conn, service_id, per_minute),
        lambda row: _write(redis, service_id, row.rate_limit_per_minute),
        committed=lambda conn: queries.lock_rate_limit(conn, service_id),
    )


async def _write(redis: Redis, service_id: UUID, per_minute: int | None) -> None:
    if per_minute is None:
        await cast(Awaitable[int], redis.hdel(keys.RATE_LIMITS_HASH, str(service_id)))
    else:
        await cast(Awaitable[int], redis.hset(keys.RATE_LIMITS_HASH, str(service_id), str(per_minute)))


async def load_rate_limits(engine: AsyncEngine, redis: Redis) -> int:
    """Copy every service's own limit into Redis, then mark the hash complete; return how many there are."""
    return await RATE_LIMITS.load(engine, redis)


async def own_rate_limit(engine: AsyncEngine, redis: Redis, service_id: UUID) -> int | None:
    """Return a service's own limit, or None when it has none (the default applies).

    One Redis round trip while the hash is complete; otherwise it is loaded from Postgres first.
    """
    found = await RATE_LIMITS.get(engine, redis, str(service_id))
    return None if found is None else int(found)
