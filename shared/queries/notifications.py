"""SQL of the notifications table: the drain's COPY and idempotent insert, GET's lookups, the v2 listing."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import Row, TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.codec import NotificationDoc, TemplateRef, encode_notification
from shared.templating import render

#: Columns of `notifications` in the order the drain's COPY writes them.
#: `status` is left to its default (`created`): this service does not deliver, so no notification has another yet.
NOTIFICATION_COLUMNS = [
    "id", "service_id", "to", "personalization", "template_id", "template_version", "created_at", "updated_at",
    "sent_at", "type", "reference",
]  # fmt: skip

INSERT_NOTIFICATIONS = text(
    """
    INSERT INTO notifications (id, service_id, "to", personalization, template_id, template_version,
                               created_at, updated_at, sent_at, type, reference)
    SELECT x.id, x.service_id, x."to", coalesce(x.personalization, '{}'::jsonb),
           (x.template->>'id')::uuid, (x.template->>'version')::int, x.created_at, x.updated_at, x.sent_at,
           x.type, x.reference
    FROM unnest(CAST(:payloads AS text[])) AS e(payload),
         json_to_recordset(e.payload::json) AS x(
           id uuid, service_id uuid, "to" text, personalization jsonb, template json,
           created_at timestamptz, updated_at timestamptz, sent_at timestamptz, type text, reference text)
    ON CONFLICT (id) DO NOTHING
    """
)

SELECT_NOTIFICATIONS_FROM = """
    SELECT n.id, n.service_id, n."to", n.created_at, n.updated_at, n.sent_at, n.personalization::text,
           n.template_id, n.template_version, n.type, n.reference, n.status, n.job_id, tv.subject, tv.body
    FROM notifications AS n
    LEFT JOIN template_versions AS tv ON tv.template_id = n.template_id AND tv.version = n.template_version
"""
SELECT_NOTIFICATION = text(SELECT_NOTIFICATIONS_FROM + " WHERE n.id = :id AND n.service_id = :service_id")
SELECT_NOTIFICATION_RANGE = text(
    SELECT_NOTIFICATIONS_FROM
    + " WHERE n.id BETWEEN CAST(:first AS uuid) AND CAST(:last AS uuid) AND n.service_id = :service_id ORDER BY n.id"
)


async def insert_notifications(conn: AsyncConnection, payloads: list[str]) -> int:
    """Insert the notifications of some stream entries (each a JSON array); return how many rows were new.

    Runs inside the caller's transaction; already stored notifications are skipped.
    """
    return int((await conn.execute(INSERT_NOTIFICATIONS, {"payloads": payloads})).rowcount)


async def fetch_notification(conn: AsyncConnection, notification_id: UUID, service_id: UUID) -> bytes | None:
    """Return the JSON document of a stored notification of `service_id`, or None."""
    row = (await conn.execute(SELECT_NOTIFICATION, {"id": notification_id, "service_id": service_id})).one_or_none()
    return None if row is None else _document(row)


async def fetch_notifications(conn: AsyncConnection, service_id: UUID, first_id: str, last_id: str) -> list[bytes]:
    """Return the JSON documents of the stored notifications of `service_id` with ids from `first_id` to `last_id`.

    In id order, in one query (one index range: a request's ids are consecutive, `shared.ids`).
    """
    params = {"first": first_id, "last": last_id, "service_id": service_id}
    return [_document(row) for row in await conn.execute(SELECT_NOTIFICATION_RANGE, params)]


def _document(row: Row[Any]) -> bytes:
    """Rebuild a stored notification's JSON document, the same bytes the API queued (templates rendered again).

    The rendering is as long as the one the API measured against MAX_RENDERED_LENGTH before accepting it (the
    template version and the personalization are those it checked), so it is bounded by the write path's check.
    """
    personalization: dict[str, str] = orjson.loads(row.personalization)
    template: TemplateRef | None = None
    if row.template_id is not None:
        template = {"id": str(row.template_id), "version": row.template_version}
    return encode_notification(
        row.id,
        row.service_id,
        row.to,
        personalization,
        row.created_at,
        template=template,
        subject=render(row.subject, personalization),
        body=render(row.body, personalization),
        updated_at=row.updated_at,
        sent_at=row.sent_at,
        notification_type=row.type,
        reference=row.reference,
        status=row.status,
        job_id=row.job_id,
    )


#: Most notifications one page of `GET /v2/notifications` lists (Notify's page size).
NOTIFY_PAGE_SIZE = 250
#: The types a stored v2 notification can have (the column's CHECK: letters are refused) and its statuses (the drain
#: leaves the column's default; this service does not deliver). A listing filter naming none of them matches nothing.
STORED_TYPES = frozenset({"email", "sms"})
STORED_STATUSES = frozenset({"created"})


@dataclass(frozen=True, slots=True)
class ListingFilter:
    """What `GET /v2/notifications` asks for.

    Any of `types` and of `statuses` (empty: all), the exact `reference`, ids below `older_than`; bulk jobs'
    notifications only with `include_jobs` (as GC Notify lists them).
    """

    types: Sequence[str] = ()
    statuses: Sequence[str] = ()
    reference: str | None = None
    older_than: UUID | None = None
    include_jobs: bool = False

    def can_match(self) -> bool:
        """Whether the filter can match a stored notification: if not, the page is empty without a query."""
        return (not self.types or not STORED_TYPES.isdisjoint(self.types)) and (
            not self.statuses or not STORED_STATUSES.isdisjoint(self.statuses)
        )


def listing_query(
    service_id: UUID, listing: ListingFilter, limit: int = NOTIFY_PAGE_SIZE
) -> tuple[TextClause, dict[str, Any]]:
    """Return the SQL and parameters listing a service's stored v2 notifications, newest first.

    Every filter reads a page newest first from an index (migration 0006): by reference, `(service_id, reference,
    id)` with the type a filter (a reference's rows are the service's fewest); otherwise one backward scan of
    `(service_id, type, id)` per type asked for (all stored types when none is), at most a page each, merged. A
    separate `(service_id, id)` index for the unfiltered list would cost the drain a third B-tree per v2 row. Types
    and statuses are first narrowed to those a stored notification can have. Ids below `older_than` are a range of
    each index. Bulk jobs' notifications are left out unless `include_jobs` (as GC Notify does): a filter on the
    rows each index scan reads, so a page behind a large job reads past its rows.
    """
    where = ["n.service_id = :service_id", "n.type IS NOT NULL"]
    if not listing.include_jobs:
        where.append("n.job_id IS NULL")
    params: dict[str, Any] = {"service_id": service_id, "limit": limit}
    wanted_types = sorted(STORED_TYPES.intersection(listing.types) if listing.types else STORED_TYPES)
    if listing.statuses:
        where.append("n.status = ANY(:statuses)")
        params["statuses"] = sorted(STORED_STATUSES.intersection(listing.statuses))
    if listing.older_than is not None:
        where.append("n.id < :older_than")
        params["older_than"] = listing.older_than
    if listing.reference is not None:
        where += ["n.reference = :reference", "n.type = ANY(:types)"]
        params.update(reference=listing.reference, types=wanted_types)
        return text(f"{SELECT_NOTIFICATIONS_FROM} WHERE {' AND '.join(where)} ORDER BY n.id DESC LIMIT :limit"), params
    branches = []
    for index, notification_type in enumerate(wanted_types or [""]):  # "": no type asked for is stored
        params[f"type_{index}"] = notification_type
        condition = " AND ".join([*where, f"n.type = :type_{index}"])
        branches.append(f"{SELECT_NOTIFICATIONS_FROM} WHERE {condition} ORDER BY n.id DESC LIMIT :limit")
    if len(branches) == 1:
        return text(branches[0]), params
    merged = " UNION ALL ".join(f"({branch})" for branch in branches)
    return text(f"SELECT * FROM ({merged}) AS page ORDER BY id DESC LIMIT :limit"), params


async def list_notify_notifications(
    conn: AsyncConnection, service_id: UUID, listing: ListingFilter, limit: int = NOTIFY_PAGE_SIZE
) -> list[bytes]:
    """Return the JSON documents of a service's stored v2 notifications that `listing` asks for, newest first.

    Callers answer a filter that cannot match (`ListingFilter.can_match`) without calling this.
    """
    query, params = listing_query(service_id, listing, limit)
    return [_document(row) for row in await conn.execute(query, params)]


def _timestamp(value: str | None, parsed: dict[str, datetime]) -> datetime | None:
    if value is None:
        return None
    found = parsed.get(value)
    if found is None:  # every notification of a request shares its timestamps: parse each string once
        found = parsed[value] = datetime.fromisoformat(value)
    return found


def copy_rows(docs: list[NotificationDoc]) -> list[tuple[Any, ...]]:
    """Turn decoded notifications into `notifications` rows for COPY (personalization re-encoded as JSON text)."""
    parsed: dict[str, datetime] = {}
    rows: list[tuple[Any, ...]] = []
    dumps = orjson.dumps
    for doc in docs:
        template = doc.get("template")
        rows.append(
            (
                doc["id"],
                doc["service_id"],
                doc["to"],
                dumps(doc["personalization"]).decode(),
                template["id"] if template else None,
                template["version"] if template else None,
                _timestamp(doc["created_at"], parsed),
                _timestamp(doc["updated_at"], parsed),
                _timestamp(doc["sent_at"], parsed),
                doc.get("type"),
                doc.get("reference"),
            )
        )
    return rows


async def copy_notifications(raw: Any, docs: list[NotificationDoc]) -> int:
    """Store decoded notifications with one binary COPY, in one transaction of the raw asyncpg connection.

    The fast path of the drain: not idempotent. It raises asyncpg's UniqueViolationError when any notification
    is stored already (a redelivered batch); the caller then stores the batch with `insert_notifications`.
    A job's rows are COPYed by `shared.job_store.copy_rows`, built from the job's rows rather than documents.
    """
    rows = copy_rows(docs)
    async with raw.transaction():
        await raw.copy_records_to_table("notifications", records=rows, columns=NOTIFICATION_COLUMNS)
    return len(rows)
