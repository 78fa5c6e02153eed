"""Services (tenants) and their API keys: the operations behind the admin routes, the CLI and `make run`.

Postgres is the record; the hash `keys.API_KEYS_HASH` in Redis mirrors the valid keys so that the API can check a
key without Postgres. Creating a key writes both; revoking removes the Redis field before the revocation
commits, so a revoked key can never stay valid in Redis.
"""

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import uuid_utils
from redis.asyncio import Redis
from redis.exceptions import RedisError
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


def utc_now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


async def create_service(engine: AsyncEngine, name: str) -> Row[Any]:
    """Create a service; raises sqlalchemy IntegrityError if the name is taken."""
    async with engine.begin() as conn:
        return await queries.insert_service(conn, new_id(), name, utc_now())


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
    """Create an API key for a service and register it in Redis.

    Raises:
        ServiceNotFoundError: no such service.
    """
    secret = apikeys.new_key()
    secret_hash = apikeys.hash_key(secret)
    async with engine.begin() as conn:
        if await queries.get_service(conn, service_id) is None:
            raise ServiceNotFoundError(str(service_id))
        record = await queries.insert_api_key(
            conn, new_id(), service_id, name, apikeys.shown_prefix(secret), secret_hash, utc_now()
        )
    # After the commit. The key exists now and its secret is shown only in this answer, so a Redis failure must
    # not lose it: the first use of the key finds it in Postgres and registers it then.
    try:
        await _register(redis, secret_hash, service_id)
    except (RedisError, OSError) as exc:
        logger.warning(
            "API key %s created but not registered in Redis (%r); its first use registers it", record.id, exc
        )
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
    """Return the service a valid (known, unrevoked) key belongs to, or None.

    Redis first; on a miss (a Redis without persistence lost the hash), Postgres, re-registering the key.
    """
    secret_hash = apikeys.hash_key(secret)
    cached = await cast(Awaitable[bytes | None], redis.hget(keys.API_KEYS_HASH, secret_hash))
    if cached is not None:
        return UUID(cached.decode())
    async with engine.connect() as conn:
        found = await queries.find_api_key(conn, secret_hash)
        if found is None or found.revoked_at is not None:
            return None
        await _register(redis, secret_hash, found.service_id)
        # a revocation that committed before our HSET would be undone by it: look once more
        again = await queries.find_api_key(conn, secret_hash)
        await conn.rollback()
    if again is None or again.revoked_at is not None:
        await _unregister(redis, secret_hash)
        return None
    service_id: UUID = found.service_id
    return service_id


async def ensure_dev_key(engine: AsyncEngine, redis: Redis, service_name: str, saved: str | None) -> tuple[str, bool]:
    """Return a valid key of the development service, reusing `saved` when still valid; True if newly made."""
    if saved and await service_for_key(engine, redis, saved) is not None:
        return saved, False
    async with engine.connect() as conn:
        service = await queries.get_service_by_name(conn, service_name)
    service_id = service.id if service is not None else (await create_service(engine, service_name)).id
    created = await create_api_key(engine, redis, service_id, "make run")
    return created.secret, True
