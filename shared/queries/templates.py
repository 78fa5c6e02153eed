"""SQL of templates and their immutable versions."""

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection

TEMPLATE_VERSION_SELECT = """
    SELECT t.id, t.service_id, t.name, t.type, t.created_at AS template_created_at,
           v.version, v.subject, v.body, v.created_at
    FROM templates AS t JOIN template_versions AS v ON v.template_id = t.id
"""


async def insert_template(
    conn: AsyncConnection,
    template_id: UUID,
    service_id: UUID,
    name: str,
    subject: str | None,
    body: str,
    now: datetime,
    template_type: str = "email",
) -> Row[Any]:
    """Create a template with its version 1; raises IntegrityError when the service has one of that name."""
    await conn.execute(
        text(
            "INSERT INTO templates (id, service_id, name, type, created_at) "
            "VALUES (:id, :service_id, :name, :type, :now)"
        ),
        {"id": template_id, "service_id": service_id, "name": name, "type": template_type, "now": now},
    )
    await conn.execute(
        text(
            "INSERT INTO template_versions (template_id, version, subject, body, created_at) "
            "VALUES (:id, 1, :subject, :body, :now)"
        ),
        {"id": template_id, "subject": subject, "body": body, "now": now},
    )
    row = await get_template_version(conn, service_id, template_id, 1)
    assert row is not None
    return row


async def lock_template(conn: AsyncConnection, service_id: UUID, template_id: UUID) -> str | None:
    """Lock a template of `service_id` until the transaction ends; return its type, or None if no such template.

    Versions of one template are added one at a time, each under this lock.
    """
    locked = await conn.execute(
        text("SELECT type FROM templates WHERE id = :id AND service_id = :service_id FOR UPDATE"),
        {"id": template_id, "service_id": service_id},
    )
    return locked.scalar_one_or_none()


async def add_template_version(
    conn: AsyncConnection, service_id: UUID, template_id: UUID, subject: str | None, body: str, now: datetime
) -> Row[Any]:
    """Add the next version of a template the transaction locked (`lock_template`)."""
    version = (
        await conn.execute(
            text(
                "INSERT INTO template_versions (template_id, version, subject, body, created_at) "
                "SELECT :id, coalesce(max(version), 0) + 1, :subject, :body, :now "
                "FROM template_versions WHERE template_id = :id RETURNING version"
            ),
            {"id": template_id, "subject": subject, "body": body, "now": now},
        )
    ).scalar_one()
    row = await get_template_version(conn, service_id, template_id, version)
    assert row is not None  # the transaction holds the template's lock
    return row


async def get_template_version(
    conn: AsyncConnection, service_id: UUID, template_id: UUID, version: int | None = None
) -> Row[Any] | None:
    """Return a template of `service_id` at `version` (the latest when None), or None."""
    if version is None:
        query = text(
            TEMPLATE_VERSION_SELECT + "WHERE t.id = :id AND t.service_id = :service_id ORDER BY v.version DESC LIMIT 1"
        )
        params: dict[str, Any] = {"id": template_id, "service_id": service_id}
    else:
        query = text(TEMPLATE_VERSION_SELECT + "WHERE t.id = :id AND t.service_id = :service_id AND v.version = :v")
        params = {"id": template_id, "service_id": service_id, "v": version}
    return (await conn.execute(query, params)).one_or_none()


async def list_templates(conn: AsyncConnection, service_id: UUID, template_type: str | None = None) -> list[Row[Any]]:
    """Return the latest version of each of a service's templates (of `template_type`, if given), by name."""
    query = text(
        "SELECT DISTINCT ON (t.name) * FROM ("
        + TEMPLATE_VERSION_SELECT
        + "WHERE t.service_id = :service_id AND (CAST(:type AS text) IS NULL OR t.type = :type)) AS t "
        "ORDER BY t.name, t.version DESC"
    )
    return list(await conn.execute(query, {"service_id": service_id, "type": template_type}))


async def list_template_versions(conn: AsyncConnection, service_id: UUID, template_id: UUID) -> list[Row[Any]]:
    """Return every version of one template, oldest first (empty if no such template)."""
    query = text(TEMPLATE_VERSION_SELECT + "WHERE t.id = :id AND t.service_id = :service_id ORDER BY v.version")
    return list(await conn.execute(query, {"id": template_id, "service_id": service_id}))
