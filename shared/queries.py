"""All SQL of the service: the drain's idempotent batch insert and GET's lookup of a drained notification.

The drain hands Postgres the stream entries' JSON as they are (a text array of JSON arrays) and lets
`json_to_recordset` unpack them, so no per-row Python objects are built on the way into the database.
Both inserts are `ON CONFLICT DO NOTHING`: a redelivered entry never makes a second row.
"""

from uuid import UUID

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.codec import encode_notification

INSERT_NOTIFICATIONS = text(
    """
    INSERT INTO notifications (id, "to", created_at, updated_at, sent_at)
    SELECT x.id, x."to", x.created_at, x.updated_at, x.sent_at
    FROM unnest(CAST(:payloads AS text[])) AS e(payload),
         json_to_recordset(e.payload::json)
           AS x(id uuid, "to" text, created_at timestamptz, updated_at timestamptz, sent_at timestamptz)
    ON CONFLICT (id) DO NOTHING
    """
)

INSERT_PERSONALIZATION = text(
    """
    INSERT INTO notification_personalization (notification_id, key, value)
    SELECT (x.doc->>'id')::uuid, p.key, p.value
    FROM unnest(CAST(:payloads AS text[])) AS e(payload),
         json_array_elements(e.payload::json) AS x(doc),
         json_each_text(x.doc->'personalization') AS p(key, value)
    ON CONFLICT (notification_id, key) DO NOTHING
    """
)

SELECT_NOTIFICATION = text(
    """
    SELECT n.id, n."to", n.created_at, n.updated_at, n.sent_at,
           (SELECT json_object_agg(p.key, p.value)
              FROM notification_personalization AS p
             WHERE p.notification_id = n.id)::text AS personalization
    FROM notifications AS n
    WHERE n.id = :id
    """
)


async def insert_notifications(conn: AsyncConnection, payloads: list[str]) -> int:
    """Insert the notifications of some stream entries (each a JSON array); return how many rows were new.

    Runs inside the caller's transaction; already stored notifications are skipped.
    """
    result = await conn.execute(INSERT_NOTIFICATIONS, {"payloads": payloads})
    await conn.execute(INSERT_PERSONALIZATION, {"payloads": payloads})
    return int(result.rowcount)


async def fetch_notification(conn: AsyncConnection, notification_id: UUID) -> bytes | None:
    """Return the JSON document of a stored notification, or None when Postgres does not have it."""
    row = (await conn.execute(SELECT_NOTIFICATION, {"id": notification_id})).one_or_none()
    if row is None:
        return None
    personalization: dict[str, str] = orjson.loads(row.personalization) if row.personalization else {}
    return encode_notification(
        row.id, row.to, personalization, row.created_at, updated_at=row.updated_at, sent_at=row.sent_at
    )
