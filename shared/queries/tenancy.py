"""SQL of services, their rate limits and their API keys."""

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection

SERVICE_COLUMNS = "id, name, created_at, rate_limit_per_minute"
API_KEY_COLUMNS = "id, service_id, name, prefix, created_at, revoked_at"


async def insert_service(conn: AsyncConnection, service_id: UUID, name: str, now: datetime) -> Row[Any]:
    """Insert a service; raises IntegrityError when the name is taken."""
    return (
        await conn.execute(
            text(f"INSERT INTO services (id, name, created_at) VALUES (:id, :name, :now) RETURNING {SERVICE_COLUMNS}"),
            {"id": service_id, "name": name, "now": now},
        )
    ).one()


async def list_services(conn: AsyncConnection) -> list[Row[Any]]:
    """Return all services, oldest first."""
    return list(await conn.execute(text(f"SELECT {SERVICE_COLUMNS} FROM services ORDER BY created_at, name")))


async def get_service(conn: AsyncConnection, service_id: UUID) -> Row[Any] | None:
    """Return one service or None."""
    query = text(f"SELECT {SERVICE_COLUMNS} FROM services WHERE id = :id")
    return (await conn.execute(query, {"id": service_id})).one_or_none()


async def get_service_by_name(conn: AsyncConnection, name: str) -> Row[Any] | None:
    """Return the service called `name`, or None."""
    query = text(f"SELECT {SERVICE_COLUMNS} FROM services WHERE name = :name")
    return (await conn.execute(query, {"name": name})).one_or_none()


async def set_rate_limit(conn: AsyncConnection, service_id: UUID, per_minute: int | None) -> Row[Any] | None:
    """Set a service's own rate limit (None: the default); return the service, or None if unknown."""
    query = text(f"UPDATE services SET rate_limit_per_minute = :limit WHERE id = :id RETURNING {SERVICE_COLUMNS}")
    return (await conn.execute(query, {"id": service_id, "limit": per_minute})).one_or_none()


async def lock_rate_limit(conn: AsyncConnection, service_id: UUID) -> Row[Any] | None:
    """Lock a service's row until the transaction ends; return its (rate_limit_per_minute), None if unknown."""
    query = text("SELECT rate_limit_per_minute FROM services WHERE id = :id FOR UPDATE")
    return (await conn.execute(query, {"id": service_id})).one_or_none()


async def own_rate_limits(conn: AsyncConnection) -> list[Row[Any]]:
    """Return (id, rate_limit_per_minute) of every service with a limit of its own."""
    query = text("SELECT id, rate_limit_per_minute FROM services WHERE rate_limit_per_minute IS NOT NULL")
    return list(await conn.execute(query))


async def insert_api_key(
    conn: AsyncConnection,
    key_id: UUID,
    service_id: UUID,
    name: str,
    prefix: str,
    secret_hash: str,
    secret_ciphertext: str | None,
    now: datetime,
) -> Row[Any]:
    """Insert an API key (its hash, and its secret sealed with SECRET_KEY)."""
    return (
        await conn.execute(
            text(
                "INSERT INTO api_keys (id, service_id, name, prefix, secret_hash, secret_ciphertext, created_at) "
                "VALUES (:id, :service_id, :name, :prefix, :secret_hash, :secret_ciphertext, :now) "
                f"RETURNING {API_KEY_COLUMNS}"
            ),
            {
                "id": key_id,
                "service_id": service_id,
                "name": name,
                "prefix": prefix,
                "secret_hash": secret_hash,
                "secret_ciphertext": secret_ciphertext,
                "now": now,
            },
        )
    ).one()


async def list_api_keys(conn: AsyncConnection, service_id: UUID) -> list[Row[Any]]:
    """Return a service's keys (revoked ones too), oldest first."""
    query = text(f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE service_id = :service_id ORDER BY created_at")
    return list(await conn.execute(query, {"service_id": service_id}))


async def revoke_api_key(conn: AsyncConnection, service_id: UUID, key_id: UUID, now: datetime) -> Row[Any] | None:
    """Mark a key revoked (keeping the first revocation time); return it with its hash and sealed secret, or None."""
    query = text(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, :now) WHERE id = :id AND service_id = :service_id "
        f"RETURNING {API_KEY_COLUMNS}, secret_hash, secret_ciphertext"
    )
    return (await conn.execute(query, {"id": key_id, "service_id": service_id, "now": now})).one_or_none()


async def valid_api_keys(conn: AsyncConnection) -> list[Row[Any]]:
    """Return (id, service_id, secret_hash, secret_ciphertext) of every key not revoked."""
    query = text("SELECT id, service_id, secret_hash, secret_ciphertext FROM api_keys WHERE revoked_at IS NULL")
    return list(await conn.execute(query))


async def revoked_api_keys(conn: AsyncConnection) -> list[Row[Any]]:
    """Return (id, service_id, secret_hash, secret_ciphertext, revoked_at) of every revoked key."""
    query = text(
        "SELECT id, service_id, secret_hash, secret_ciphertext, revoked_at FROM api_keys WHERE revoked_at IS NOT NULL"
    )
    return list(await conn.execute(query))


async def sealed_api_keys(conn: AsyncConnection) -> list[Row[Any]]:
    """Return (id, secret_ciphertext) of every key whose secret is kept (for sealing them again)."""
    query = text("SELECT id, secret_ciphertext FROM api_keys WHERE secret_ciphertext IS NOT NULL ORDER BY id")
    return list(await conn.execute(query))


async def set_api_key_ciphertext(conn: AsyncConnection, key_id: UUID, old: str, new: str) -> bool:
    """Replace a key's sealed secret, if it is still `old`; return whether it was."""
    query = text("UPDATE api_keys SET secret_ciphertext = :new WHERE id = :id AND secret_ciphertext = :old")
    return bool((await conn.execute(query, {"id": key_id, "old": old, "new": new})).rowcount)
