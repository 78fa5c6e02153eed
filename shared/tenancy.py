"""Services (tenants) and their API keys: the operations behind the admin routes, the CLI and `make run`.

Postgres is the record; the Redis registry (`REGISTRY`, a `shared.mirror`) mirrors the valid keys so that the API
checks a key without Postgres: `keys.API_KEYS_HASH` (key hash → service id) for bearer keys, and per service a hash
of its keys' secrets sealed with SECRET_KEY (`keys.api_key_secrets_key`) for GOV.UK Notify's JWTs. A key is
registered before its row commits (a Redis that cannot be reached fails the creation); a revocation unregisters it
before it commits and again after, so a revoked key never stays valid in Redis.
"""

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import uuid_utils
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import api_key_format, keys, mirror, queries, redis_client
from shared.secretbox import SecretBox

logger = logging.getLogger(__name__)


class ServiceNotFoundError(LookupError):
    """No service with that id."""


def new_id() -> UUID:
    """Return a new time-ordered id (UUIDv7)."""
    return UUID(bytes=uuid_utils.uuid7().bytes)


@dataclass(frozen=True)
class SealedSecret:
    """A key's secret as the registry holds it: sealed (None: a key issued before secrets were kept)."""

    key_id: UUID
    ciphertext: str | None
    revoked: bool


def _secret_entry(ciphertext: str | None, revoked_at: datetime | None) -> str:
    state = "v" if revoked_at is None else f"r{int(revoked_at.timestamp())}"
    return f"{state}:{ciphertext or ''}"


def _parse_secret_entry(key_id: bytes, entry: bytes) -> tuple[SealedSecret, float | None]:
    """Return a registry entry and, for a revoked key, when it was revoked (unix time)."""
    state, _, ciphertext = entry.decode().partition(":")
    revoked_at = float(state[1:]) if state.startswith("r") else None
    return SealedSecret(UUID(key_id.decode()), ciphertext or None, revoked_at is not None), revoked_at


def _register(pipe: Pipeline, service_id: UUID, key_id: UUID, secret_hash: str, ciphertext: str | None) -> None:
    pipe.hset(keys.API_KEYS_HASH, secret_hash, str(service_id))
    pipe.hset(keys.api_key_secrets_key(service_id), str(key_id), _secret_entry(ciphertext, None))


def _unregister(pipe: Pipeline, record: Row[Any]) -> None:
    pipe.hdel(keys.API_KEYS_HASH, record.secret_hash)
    entries = keys.api_key_secrets_key(record.service_id)
    if time.time() - record.revoked_at.timestamp() < keys.REVOKED_KEY_GRACE_SECONDS:
        pipe.hset(entries, str(record.id), _secret_entry(record.secret_ciphertext, record.revoked_at))
    else:
        pipe.hdel(entries, str(record.id))


REGISTRY_CHUNK = 1000


async def _in_chunks(redis: Redis, rows: list[Row[Any]], write: Callable[[Pipeline, Row[Any]], None]) -> None:
    for start in range(0, len(rows), REGISTRY_CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for row in rows[start : start + REGISTRY_CHUNK]:
                write(pipe, row)
            await pipe.execute()


async def _copy_registry(engine: AsyncEngine, redis: Redis) -> int:
    """Register every valid key (and every key revoked within the grace); return how many valid keys there are.

    A key revoked while this runs may have been read as valid: the revoked keys are read again after the
    registration and unregistered, before the registry is marked complete (a revocation committed later
    unregisters the key itself, after its commit).
    """
    async with engine.connect() as conn:
        valid = await queries.valid_api_keys(conn)
    await _in_chunks(
        redis, valid, lambda pipe, row: _register(pipe, row.service_id, row.id, row.secret_hash, row.secret_ciphertext)
    )
    async with engine.connect() as conn:
        revoked = await queries.revoked_api_keys(conn)
    await _in_chunks(redis, revoked, _unregister)
    return len(valid)


#: The registry: `keys.API_KEYS_HASH` (and the services' secrets hashes), complete with `keys.API_KEYS_COMPLETE_FIELD`.
REGISTRY = mirror.Mirror(
    keys.API_KEYS_HASH,
    keys.API_KEYS_COMPLETE_FIELD,
    _copy_registry,
    "API key registry loaded into Redis from Postgres: %d valid keys",
)


async def load_registry(engine: AsyncEngine, redis: Redis) -> int:
    """Register every valid key (and every key revoked within the grace) in Redis, then mark the registry complete.

    Return how many valid keys it holds.
    """
    return await REGISTRY.load(engine, redis)


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
    """A new API key: its record, and the key itself, which is shown this once and stored only hashed and sealed."""

    record: Row[Any]
    secret: str


async def create_api_key(engine: AsyncEngine, redis: Redis, box: SecretBox, service_id: UUID, name: str) -> CreatedKey:
    """Create an API key for a service (its secret sealed in `box`), registered in Redis before its row commits.

    Raises:
        ServiceNotFoundError: no such service.
        redis.exceptions.RedisError, OSError: Redis cannot be reached; no key was made.
    """
    key, secret = api_key_format.new_key(name, service_id)
    secret_hash, ciphertext = api_key_format.hash_key(key), box.seal(secret)
    async with engine.begin() as conn:
        if await queries.get_service(conn, service_id) is None:
            raise ServiceNotFoundError(str(service_id))
        record = await queries.insert_api_key(
            conn, new_id(), service_id, name, api_key_format.shown_prefix(key), secret_hash, ciphertext, utc_now()
        )
        # Before the commit: a complete registry refuses a key it does not hold. Should the commit fail after this,
        # the fields name a key nobody was ever shown. (On a cluster the two hashes are in different slots and are
        # written one after the other: should the second write fail, the creation fails, with the same outcome.)
        async with redis_client.transaction_if_possible(redis) as pipe:
            _register(pipe, service_id, record.id, secret_hash, ciphertext)
            await pipe.execute()
    return CreatedKey(record, key)


async def list_api_keys(engine: AsyncEngine, service_id: UUID) -> list[Row[Any]]:
    """Return a service's keys (without secrets)."""
    async with engine.connect() as conn:
        if await queries.get_service(conn, service_id) is None:
            raise ServiceNotFoundError(str(service_id))
        return await queries.list_api_keys(conn, service_id)


async def _unregister_now(redis: Redis, record: Row[Any]) -> None:
    async with redis_client.transaction_if_possible(redis) as pipe:
        _unregister(pipe, record)
        await pipe.execute()


async def revoke_api_key(engine: AsyncEngine, redis: Redis, service_id: UUID, key_id: UUID) -> Row[Any] | None:
    """Revoke a key; return its record, or None if the service has no such key."""
    record = await REGISTRY.write_through(
        engine,
        lambda conn: queries.revoke_api_key(conn, service_id, key_id, utc_now()),
        lambda revoked: _unregister_now(redis, revoked),
    )
    if record is not None:
        await _forget_old_revocations(redis, service_id)
    return record


async def _forget_old_revocations(redis: Redis, service_id: UUID) -> None:
    """Drop a service's keys revoked longer ago than the grace (only revocations add entries: this bounds them)."""
    entries = keys.api_key_secrets_key(service_id)
    registered = await cast(Awaitable[dict[bytes, bytes]], redis.hgetall(entries))
    since = time.time() - keys.REVOKED_KEY_GRACE_SECONDS
    old = [
        key_id.decode()
        for key_id, entry in registered.items()
        if (_parse_secret_entry(key_id, entry)[1] or since) < since
    ]
    if old:
        await cast(Awaitable[int], redis.hdel(entries, *old))


async def service_for_key(engine: AsyncEngine, redis: Redis, secret: str) -> UUID | None:
    """Return the service a valid (known, unrevoked) key belongs to, or None."""
    return await service_for_hash(engine, redis, api_key_format.hash_key(secret))


async def service_for_hash(engine: AsyncEngine, redis: Redis, secret_hash: str) -> UUID | None:
    """Return the service of the valid key with this hash, or None.

    One Redis round trip while the registry is complete; otherwise the registry is loaded from Postgres first.
    """
    found = await REGISTRY.get(engine, redis, secret_hash)
    return None if found is None else UUID(found.decode())


async def sealed_secrets(engine: AsyncEngine, redis: Redis, service_id: UUID) -> list[SealedSecret] | None:
    """Return the sealed secrets of a service's keys, valid ones first; None if the service has no key.

    Keys revoked longer ago than `keys.REVOKED_KEY_GRACE_SECONDS` are left out. One Redis round trip while the
    registry is complete; otherwise the registry is loaded from Postgres first.
    """
    replies = await REGISTRY.read(engine, redis, lambda pipe: pipe.hgetall(keys.api_key_secrets_key(service_id)))
    return None if replies is None else _current(replies[0].items())


async def registered_secrets(redis: Redis, service_id: UUID) -> list[SealedSecret] | None:
    """Return the sealed secrets Redis holds for a service, complete registry or not (Postgres unreachable).

    Every key made or revoked since Redis lost the registry is there (a revocation reaches Redis before it
    commits); keys made before may be missing, so a token none of these signed is not known to be invalid.
    """
    registered = await cast(Awaitable[dict[bytes, bytes]], redis.hgetall(keys.api_key_secrets_key(service_id)))
    return _current(registered.items())


def _current(registered: Iterable[tuple[bytes, bytes]]) -> list[SealedSecret] | None:
    since = time.time() - keys.REVOKED_KEY_GRACE_SECONDS
    parsed = [_parse_secret_entry(key_id, entry) for key_id, entry in registered]
    current = [secret for secret, revoked_at in parsed if revoked_at is None or revoked_at >= since]
    return sorted(current, key=lambda secret: secret.revoked) or None


async def reseal_secrets(engine: AsyncEngine, redis: Redis, box: SecretBox) -> int:
    """Seal every kept secret again with the first key of SECRET_KEY, in Postgres and Redis; return how many.

    Raises:
        cryptography.fernet.InvalidToken: a secret that none of SECRET_KEY's keys opens (nothing after it changed).
    """
    async with engine.connect() as conn:
        sealed = await queries.sealed_api_keys(conn)
    resealed = 0
    for row in sealed:
        async with engine.begin() as conn:
            resealed += await queries.set_api_key_ciphertext(
                conn, row.id, row.secret_ciphertext, box.reseal(row.secret_ciphertext)
            )
    await load_registry(engine, redis)  # the registry's ciphertexts, from the record (revocations stay as they are)
    return resealed


async def ensure_dev_key(
    engine: AsyncEngine, redis: Redis, box: SecretBox, service_name: str, saved: str | None
) -> tuple[str, bool]:
    """Return a valid key of the development service, reusing `saved` when still valid; True if newly made.

    A saved key of the older `nk_` shape is replaced (not revoked), since it cannot sign GOV.UK Notify's JWTs.
    """
    if saved and not api_key_format.is_legacy_key(saved) and await service_for_key(engine, redis, saved):
        return saved, False
    async with engine.connect() as conn:
        service = await queries.get_service_by_name(conn, service_name)
    service_id = service.id if service is not None else (await create_service(engine, service_name)).id
    created = await create_api_key(engine, redis, box, service_id, "make run")
    return created.secret, True
