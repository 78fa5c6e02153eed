"""SQL of bulk jobs (migration 0007): create, read, list, cancel and claim under a row lock."""

from collections.abc import Collection
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Row, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from shared import failures, jobs

#: SQLSTATE of a row lock that NOWAIT could not take.
LOCK_NOT_AVAILABLE = "55P03"

#: A job with its service and template type, which are its template's (migration 0007), and the names its answers
#: show (its service's, its API key's).
JOB_SELECT = """
    SELECT j.id, j.name, j.template_id, j.template_version, j.notification_count, j.status, j.scheduled_for,
           j.created_at, j.api_key_id, j.cancelled_at, j.reference, t.service_id, t.type AS template_type,
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
    reference: str | None = None,
) -> None:
    """Create a job (the template version must exist: a foreign key; the caller checks it is the service's)."""
    await conn.execute(
        text(
            "INSERT INTO jobs (id, name, template_id, template_version, notification_count, status, scheduled_for, "
            "created_at, api_key_id, reference) VALUES (:id, :name, :template_id, :version, :count, :status, "
            ":scheduled_for, :created_at, :api_key_id, :reference)"
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
            "reference": reference,
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
    conn: AsyncConnection, service_id: UUID, job_id: UUID, now: datetime | None = None
) -> tuple[Row[Any] | None, bool]:
    """Cancel a job of `service_id` that is `scheduled` and not yet due; return it and whether this cancelled it.

    The job's row is locked (`FOR UPDATE`) while it is checked and changed, so a scheduler starting due jobs, which
    takes the same lock, either starts it first (then it is not cancelled) or finds it cancelled. A job that is
    already cancelled, started, or due is returned unchanged with False; an unknown job (or another service's) is
    (None, False). A cancelled job's kept rows (`job_files`) are deleted with it. "Due" is on Postgres's clock, as
    the scheduler's (`now` only for tests). A job a scheduler holds (being stored) is not cancellable, and the
    cancel does not wait for it (`NOWAIT`): a large job's run would otherwise hold the caller's pooled connection.
    """
    try:
        async with conn.begin_nested():  # a savepoint: a lock not available must not abort the caller's transaction
            locked = (
                await conn.execute(
                    text(
                        "SELECT j.status, j.scheduled_for, coalesce(CAST(:now AS timestamptz), now()) AS now "
                        "FROM jobs AS j JOIN templates AS t ON t.id = j.template_id "
                        "WHERE j.id = :id AND t.service_id = :service_id FOR UPDATE OF j NOWAIT"
                    ),
                    {"id": job_id, "service_id": service_id, "now": now},
                )
            ).one_or_none()
    except DBAPIError as exc:
        if failures.sqlstate(exc) != LOCK_NOT_AVAILABLE:
            raise
        # a scheduler is storing it (for as long as the job takes): too late to cancel, and no waiting for it
        return await get_job(conn, service_id, job_id), False
    if locked is None:
        return None, False
    cancellable = locked.status == jobs.SCHEDULED and locked.scheduled_for > locked.now
    if cancellable:
        await conn.execute(
            text("UPDATE jobs SET status = 'cancelled', cancelled_at = :now WHERE id = :id"),
            {"id": job_id, "now": locked.now},
        )
        await conn.execute(text("DELETE FROM job_files WHERE job_id = :id"), {"id": job_id})
    return await get_job(conn, service_id, job_id), cancellable


async def claim_due_job(conn: AsyncConnection, skip: Collection[UUID] = ()) -> Row[Any] | None:
    """Take the scheduled job due longest ago for this transaction; None when none is due.

    Due means `scheduled_for <= now()` on Postgres's clock (the transaction's start), never the caller's: a worker
    whose clock is wrong (issue 19) neither starts a job early nor holds one back. The job becomes `pending` and
    stays locked until the transaction ends: a scheduler queues its rows in the same transaction, so a crash rolls
    the job back to `scheduled` (due, taken again by the next run). `SKIP LOCKED`: schedulers running at once take
    different jobs; a job being cancelled (`cancel_job` holds its lock) is skipped, as are the jobs in `skip` (those
    that failed this run). The row is JOB_SELECT's with `claimed_at`, that `now()`.
    """
    claimed = (
        await conn.execute(
            text(
                "UPDATE jobs SET status = 'pending' WHERE id = ("
                "SELECT id FROM jobs WHERE status = 'scheduled' AND scheduled_for <= now() "
                "AND id <> ALL(CAST(:skip AS uuid[])) "
                "ORDER BY scheduled_for, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id"
            ),
            {"skip": [str(job_id) for job_id in skip]},
        )
    ).scalar_one_or_none()
    if claimed is None:
        return None
    query = text(f"SELECT job.*, now() AS claimed_at FROM ({JOB_SELECT} WHERE j.id = :id) AS job")
    return (await conn.execute(query, {"id": claimed})).one()


async def store_claimed_job(conn: AsyncConnection, job_id: UUID, stored: int) -> None:
    """Mark a job claimed by `claim_due_job` `stored` with the number of rows its scheduler stored."""
    await conn.execute(
        text("UPDATE jobs SET status = 'stored', notification_count = :count WHERE id = :id AND status = 'pending'"),
        {"id": job_id, "count": stored},
    )


async def lock_job_key(conn: AsyncConnection, service_id: UUID, key: str) -> bool:
    """Take a service's job Idempotency-Key for this transaction; False when another transaction holds it now.

    An advisory lock on the key, not the `job_keys` row: the row is written at the end of a job's transaction, and
    a retry arriving meanwhile is told at once (409) rather than left waiting for the whole upload.
    """
    query = text("SELECT pg_try_advisory_xact_lock(hashtextextended(:service_id || ' ' || :key, 2112))")
    return bool((await conn.execute(query, {"service_id": str(service_id), "key": key})).scalar_one())


async def get_job_key(conn: AsyncConnection, service_id: UUID, key: str, ttl_seconds: int) -> Row[Any] | None:
    """Return the job (`job_id`, `fingerprint`) a service's Idempotency-Key names; keys past the TTL are dropped."""
    await conn.execute(
        text(
            "DELETE FROM job_keys WHERE service_id = :service_id AND key = :key "
            "AND created_at < now() - make_interval(secs => :ttl)"
        ),
        {"service_id": service_id, "key": key, "ttl": ttl_seconds},
    )
    query = text("SELECT job_id, fingerprint FROM job_keys WHERE service_id = :service_id AND key = :key")
    return (await conn.execute(query, {"service_id": service_id, "key": key})).one_or_none()


async def insert_job_key(conn: AsyncConnection, service_id: UUID, key: str, job_id: UUID, fingerprint: bytes) -> None:
    """Record a service's Idempotency-Key for a job (in the job's own transaction)."""
    await conn.execute(
        text(
            "INSERT INTO job_keys (service_id, key, job_id, fingerprint) "
            "VALUES (:service_id, :key, :job_id, :fingerprint)"
        ),
        {"service_id": service_id, "key": key, "job_id": job_id, "fingerprint": fingerprint},
    )


async def delete_expired_job_keys(conn: AsyncConnection, ttl_seconds: int) -> int:
    """Delete the job Idempotency-Keys older than the TTL (their jobs stay); return how many."""
    result = await conn.execute(
        text("DELETE FROM job_keys WHERE created_at < now() - make_interval(secs => :ttl)"), {"ttl": ttl_seconds}
    )
    return int(result.rowcount)
