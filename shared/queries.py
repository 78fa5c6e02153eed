"""All SQL of the service: the drain's inserts, GET's lookups and listings, and the tenancy tables.

The drain's fast path is one binary COPY of decoded rows (`copy_notifications`); its idempotent path
(`insert_notifications`, for redelivered entries) hands Postgres the entries' JSON as they are and inserts `ON
CONFLICT DO NOTHING`: a redelivered entry never makes a second row.
"""

from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import Row, TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared import jobs
from shared.codec import NotificationDoc, TemplateRef, encode_notification
from shared.templating import render

# --- notifications (drain and GET) -------------------------------------------------------------------------------

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


def listing_can_match(types: list[str], statuses: list[str]) -> bool:
    """Whether a listing filter can match a stored notification (empty: no filter): if not, the page is empty."""
    return (not types or not STORED_TYPES.isdisjoint(types)) and (
        not statuses or not STORED_STATUSES.isdisjoint(statuses)
    )


def listing_query(
    service_id: UUID,
    *,
    types: list[str],
    statuses: list[str],
    reference: str | None,
    older_than: UUID | None,
    limit: int = NOTIFY_PAGE_SIZE,
    include_jobs: bool = False,
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
    if not include_jobs:
        where.append("n.job_id IS NULL")
    params: dict[str, Any] = {"service_id": service_id, "limit": limit}
    wanted_types = sorted(STORED_TYPES.intersection(types) if types else STORED_TYPES)
    if statuses:
        where.append("n.status = ANY(:statuses)")
        params["statuses"] = sorted(STORED_STATUSES.intersection(statuses))
    if older_than is not None:
        where.append("n.id < :older_than")
        params["older_than"] = older_than
    if reference is not None:
        where += ["n.reference = :reference", "n.type = ANY(:types)"]
        params.update(reference=reference, types=wanted_types)
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
    conn: AsyncConnection,
    service_id: UUID,
    *,
    types: list[str],
    statuses: list[str],
    reference: str | None,
    older_than: UUID | None,
    limit: int = NOTIFY_PAGE_SIZE,
    include_jobs: bool = False,
) -> list[bytes]:
    """Return the JSON documents of a service's stored v2 notifications (type not NULL), newest first.

    Filters: any of `types` and of `statuses` (empty: all), the exact `reference`, ids below `older_than`
    (`listing_query`); bulk jobs' notifications only with `include_jobs`. Callers answer a filter that cannot
    match (`listing_can_match`) without calling this.
    """
    query, params = listing_query(
        service_id,
        types=types,
        statuses=statuses,
        reference=reference,
        older_than=older_than,
        limit=limit,
        include_jobs=include_jobs,
    )
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


async def copy_notifications(raw: Any, docs: list[NotificationDoc], job_id: UUID | None = None) -> int:
    """Store decoded notifications with one binary COPY, in one transaction of the raw asyncpg connection.

    The fast path of the drain: not idempotent. It raises asyncpg's UniqueViolationError when any notification
    is stored already (a redelivered batch); the caller then stores the batch with `insert_notifications`.
    A bulk job's rows (`api.jobs`) are COPYed the same way with their `job_id`, inside the job's own transaction
    (this one is then a savepoint of it).
    """
    rows = copy_rows(docs)
    columns = NOTIFICATION_COLUMNS
    if job_id is not None:
        rows = [(*row, job_id) for row in rows]
        columns = [*NOTIFICATION_COLUMNS, "job_id"]
    async with raw.transaction():
        await raw.copy_records_to_table("notifications", records=rows, columns=columns)
    return len(rows)


# --- services and API keys ------------------------------------------------------------------------------------------

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


# --- templates ------------------------------------------------------------------------------------------------------

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


# --- jobs (bulk sends) ---------------------------------------------------------------------------------------------

#: A job with its service and template type, which are its template's (migration 0007), and the names its answers
#: show (its service's, its API key's).
JOB_SELECT = """
    SELECT j.id, j.name, j.template_id, j.template_version, j.notification_count, j.status, j.scheduled_for,
           j.created_at, j.api_key_id, j.cancelled_at, t.service_id, t.type AS template_type,
           s.name AS service_name, k.name AS api_key_name
    FROM jobs AS j JOIN templates AS t ON t.id = j.template_id JOIN services AS s ON s.id = t.service_id
    LEFT JOIN api_keys AS k ON k.id = j.api_key_id
"""


async def insert_job(
    conn: AsyncConnection,
    job_id: UUID,
    name: str,
    template_id: UUID,
    template_version: int,
    notification_count: int,
    status: str,
    scheduled_for: datetime | None,
    created_at: datetime,
    api_key_id: UUID | None,
) -> None:
    """Create a job (the template version must exist: a foreign key; the caller checks it is the service's)."""
    await conn.execute(
        text(
            "INSERT INTO jobs (id, name, template_id, template_version, notification_count, status, scheduled_for, "
            "created_at, api_key_id) VALUES (:id, :name, :template_id, :version, :count, :status, :scheduled_for, "
            ":created_at, :api_key_id)"
        ),
        {
            "id": job_id,
            "name": name,
            "template_id": template_id,
            "version": template_version,
            "count": notification_count,
            "status": status,
            "scheduled_for": scheduled_for,
            "created_at": created_at,
            "api_key_id": api_key_id,
        },
    )


async def get_job(conn: AsyncConnection, service_id: UUID, job_id: UUID) -> Row[Any] | None:
    """Return a job of `service_id`, or None (another service's job is None too)."""
    query = text(JOB_SELECT + "WHERE j.id = :id AND t.service_id = :service_id")
    return (await conn.execute(query, {"id": job_id, "service_id": service_id})).one_or_none()


async def list_jobs(
    conn: AsyncConnection, service_id: UUID, limit: int, older_than: UUID | None = None
) -> list[Row[Any]]:
    """Return up to `limit` of a service's jobs, newest first, older than the job `older_than` if given."""
    query = text(
        JOB_SELECT + "WHERE t.service_id = :service_id AND (CAST(:older_than AS uuid) IS NULL OR j.id < :older_than) "
        "ORDER BY j.id DESC LIMIT :limit"
    )
    return list(await conn.execute(query, {"service_id": service_id, "older_than": older_than, "limit": limit}))


async def cancel_job(
    conn: AsyncConnection, service_id: UUID, job_id: UUID, now: datetime
) -> tuple[Row[Any] | None, bool]:
    """Cancel a job of `service_id` that is `scheduled` and not yet due; return it and whether this cancelled it.

    The job's row is locked (`FOR UPDATE`) while it is checked and changed, so a scheduler starting due jobs, which
    takes the same lock, either starts it first (then it is not cancelled) or finds it cancelled. A job that is
    already cancelled, started, or due is returned unchanged with False; an unknown job (or another service's) is
    (None, False).
    """
    locked = (
        await conn.execute(
            text(
                "SELECT j.status, j.scheduled_for FROM jobs AS j JOIN templates AS t ON t.id = j.template_id "
                "WHERE j.id = :id AND t.service_id = :service_id FOR UPDATE OF j"
            ),
            {"id": job_id, "service_id": service_id},
        )
    ).one_or_none()
    if locked is None:
        return None, False
    cancellable = locked.status == jobs.SCHEDULED and locked.scheduled_for > now
    if cancellable:
        await conn.execute(
            text("UPDATE jobs SET status = 'cancelled', cancelled_at = :now WHERE id = :id"), {"id": job_id, "now": now}
        )
    return await get_job(conn, service_id, job_id), cancellable


async def claim_due_job(conn: AsyncConnection, now: datetime) -> Row[Any] | None:
    """Take the scheduled job due longest ago (`scheduled_for <= now`) for this transaction; None when none is due.

    The job becomes `pending` and stays locked until the transaction ends: a scheduler queues its rows in the same
    transaction, so a crash rolls the job back to `scheduled` (due, taken again by the next run). `SKIP LOCKED`:
    schedulers running at once take different jobs; a job being cancelled (`cancel_job` holds its lock) is skipped.
    """
    claimed = (
        await conn.execute(
            text(
                "UPDATE jobs SET status = 'pending' WHERE id = ("
                "SELECT id FROM jobs WHERE status = 'scheduled' AND scheduled_for <= :now "
                "ORDER BY scheduled_for, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id"
            ),
            {"now": now},
        )
    ).scalar_one_or_none()
    if claimed is None:
        return None
    return (await conn.execute(text(JOB_SELECT + "WHERE j.id = :id"), {"id": claimed})).one()
