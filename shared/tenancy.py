"""Services (tenants) and their API keys: the operations behind the admin routes, the CLI and `make run`.

Postgres is the record; the hash `keys.API_KEYS_HASH` in Redis mirrors the valid keys so that the API can check a
key without Postgres. Creating a key registers it in Redis before its row commits (a Redis that cannot be reached
fails the creation: nothing is made); revoking removes the Redis field before the revocation commits and again
after, so a revoked key can never stay valid in Redis.

Once the hash holds every valid key it carries the field `keys.API_KEYS_COMPLETE_FIELD`, and a key not in it is
refused without a Postgres query: random keys cost one Redis lookup, never a database connection. A hash without
the field (a Redis without persistence restarted, or a database from before the field existed) is loaded again
from Postgres on the first miss, once per process at a time.
"""

import asyncio
import logging
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import uuid_utils
from redis.asyncio import Redis
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import apikeys, keys, queries

logger = logging.getLogger(__name__)


class ServiceNotFoundError(LookupError):
    """No service with that id."""


def new_id() -> UUID:
    """Return a new time-ordered id (UUIDv7)."""
    return UUID(bytes=uuid_utils.uuid7().bytes)


async def _register(redis: Redis, secret_hash: str, service_id: UUID) -> None:
    await cast(Awaitable[int], redis.hset(keys.API_KEYS_HASH, secret_hash, str(service_id)))


async def _unregister(redis: Redis, secret_hash: str) -> None:
    await cast(Awaitable[int], redis.hdel(keys.API_KEYS_HASH, secret_hash))


#: One registry load at a time per event loop: a burst of unknown keys while the hash is incomplete loads it once.
_registry_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()
REGISTRY_CHUNK = 1000


async def load_registry(engine: AsyncEngine, redis: Redis) -> int:
    """Register every valid key in Redis, then mark the registry complete; return how many keys it holds.

    A key revoked while this runs may have been read as valid: the revoked keys are read again after the
    registration and removed, before the registry is marked complete (a revocation committed later removes its
    field itself, after its commit).
    """
    async with engine.connect() as conn:
        valid = await queries.valid_api_keys(conn)
    for start in range(0, len(valid), REGISTRY_CHUNK):
        chunk = {row.secret_hash: str(row.service_id) for row in valid[start : start + REGISTRY_CHUNK]}
        await cast(Awaitable[int], redis.hset(keys.API_KEYS_HASH, mapping=chunk))
    async with engine.connect() as conn:
        revoked = await queries.revoked_api_key_hashes(conn)
    for start in range(0, len(revoked), REGISTRY_CHUNK):
        await cast(Awaitable[int], redis.hdel(keys.API_KEYS_HASH, *revoked[start : start + REGISTRY_CHUNK]))
    await cast(Awaitable[int], redis.hset(keys.API_KEYS_HASH, keys.API_KEYS_COMPLETE_FIELD, "1"))
    logger.info("API key registry loaded into Redis from Postgres: %d valid keys", len(valid))
    return len(valid)


def utc_now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


async def create_service(engine: AsyncEngine, name: str) -> Row[Any]:
    """Create a service; raises sqlalchemy IntegrityError if the name is taken."""
    async with engine.begin() as conn:
        return await queries.insert_service(conn, new_id(), name, utc_now())


async def service_id_by_name(engine: AsyncEngine, name: str) -> UUID | None:
    """Return the id of the service called `name`, or None."""
    async with engine.connect() as conn:
        service = await queries.get_service_by_name(conn, name)
    return None if service is None else UUID(str(service.id))


async def list_services(engine: AsyncEngine) -> list[Row[Any]]:
    """Return every service."""
    async with engine.connect() as conn:
        return await queries.list_services(conn)


@dataclass(frozen=True)
class CreatedKey:
    """A new API key: its record, and the secret, which is shown this once and never stored."""

    record: Row[Any]
    secret: str


async def create_api_key(engine: AsyncEngine, redis: Redis, service_id: UUID, name: str) -> CreatedKey:
    """Create an API key for a service, registered in Redis before its row commits.

    Raises:
        ServiceNotFoundError: no such service.
        redis.exceptions.RedisError, OSError: Redis cannot be reached; no key was made.
    """
    secret = apikeys.new_key()
    secret_hash = apikeys.hash_key(secret)
    async with engine.begin() as conn:
        if await queries.get_service(conn, service_id) is None:
            raise ServiceNotFoundError(str(service_id))
        record = await queries.insert_api_key(
            conn, new_id(), service_id, name, apikeys.shown_prefix(secret), secret_hash, utc_now()
        )
        # Before the commit: a complete registry refuses a key it does not hold. Should the commit fail after this,
        # the field names a secret nobody was ever shown.
        await _register(redis, secret_hash, service_id)
    return CreatedKey(record, secret)


async def list_api_keys(engine: AsyncEngine, service_id: UUID) -> list[Row[Any]]:
    """Return a service's keys (without secrets)."""
    async with engine.connect() as conn:
        if await queries.get_service(conn, service_id) is None:
            raise ServiceNotFoundError(str(service_id))
        return await queries.list_api_keys(conn, service_id)


async def revoke_api_key(engine: AsyncEngine, redis: Redis, service_id: UUID, key_id: UUID) -> Row[Any] | None:
    """Revoke a key; return its record, or None if the service has no such key."""
    async with engine.begin() as conn:
        record = await queries.revoke_api_key(conn, service_id, key_id, utc_now())
        if record is not None:  # fails the revocation (rollback) if Redis cannot be told
            await _unregister(redis, record.secret_hash)
    if record is not None:  # again after the commit: a lookup racing with us may have re-registered it
        await _unregister(redis, record.secret_hash)
    return record


async def service_for_key(engine: AsyncEngine, redis: Redis, secret: str) -> UUID | None:
    """Return the service a valid (known, unrevoked) key belongs to, or None."""
    return await service_for_hash(engine, redis, apikeys.hash_key(secret))


async def service_for_hash(engine: AsyncEngine, redis: Redis, secret_hash: str) -> UUID | None:
    """Return the service of the valid key with this hash, or None.

    One Redis round trip while the registry is complete; otherwise the registry is loaded from Postgres first.
    """
    for _ in range(2):
        found, complete = await cast(
            Awaitable[list[bytes | None]],
            redis.hmget(keys.API_KEYS_HASH, [secret_hash, keys.API_KEYS_COMPLETE_FIELD]),
        )
        if found is not None:
            return UUID(found.decode())
        if complete is not None:
            return None
        lock = _registry_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
        async with lock:
            if not await cast(Awaitable[bool], redis.hexists(keys.API_KEYS_HASH, keys.API_KEYS_COMPLETE_FIELD)):
                await load_registry(engine, redis)
    return None


async def ensure_dev_key(engine: AsyncEngine, redis: Redis, service_name: str, saved: str | None) -> tuple[str, bool]:
    """Return a valid key of the development service, reusing `saved` when still valid; True if newly made."""
    if saved and await service_for_key(engine, redis, saved) is not None:
        return saved, False
    async with engine.connect() as conn:
        service = await queries.get_service_by_name(conn, service_name)
    service_id = service.id if service is not None else (await create_service(engine, service_name)).id
    created = await create_api_key(engine, redis, service_id, "make run")
    return created.secret, True
