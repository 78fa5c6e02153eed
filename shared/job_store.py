"""A job's rows into Postgres, in the caller's transaction: COPYed as notifications, or kept as a file until their time.

One path for every job, whichever route made it and whoever runs it (the API for a job that runs at once, the
worker's scheduler for a scheduled one); docs/jobs.md has the design.

- `copy_rows` COPYs each batch of validated rows into `notifications` (binary COPY, `job_id` set) as the batches
  come, reading the next batch while Postgres writes the previous one. Ids are the job's: one UUIDv7 stem, the
  row's index in the last 24 bits (`shared.ids`), so a job's notifications are one id range in one day partition.
- `save_file` keeps a scheduled job's rows in `job_files` (migration 0008), one chunk a batch; `file_batches`
  reads them back as batches of rows, and `delete_file` drops them once queued.

Nothing here commits: the caller's transaction makes a job all or nothing (a refused row or a killed process rolls
every batch back).
"""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared import ids, partitions
from shared.queries import NOTIFICATION_COLUMNS
from shared.recipient_csv import JobRow

#: Columns of a job's COPY: a notification's, then its job.
JOB_COLUMNS = [*NOTIFICATION_COLUMNS, "job_id"]
#: Rows a job's batch holds (a COPY each): larger than the drain's entries, as COPY's cost per call is paid once.
JOB_BATCH_ROWS = 5000

#: Days whose partition this process has found or made (`partitions.ensure` asks Postgres once per day).
_KNOWN_DAYS: set[date] = set()


@dataclass(frozen=True, slots=True)
class JobTarget:
    """What every notification of a job shares: its job, service, template version, type and reference."""

    job_id: UUID
    service_id: UUID
    template_id: UUID
    template_version: int
    template_type: str
    reference: str | None


async def new_stem(engine: AsyncEngine, at: datetime | None = None) -> str:
    """Return a new stem for a job's ids, its day's partition made first (a COPY into a missing one fails).

    The ids' time is `at` when given (the scheduler passes Postgres's clock, not its own), else this process's.
    """
    stem = ids.new_stem()
    if at is not None:
        stem = f"{int(at.timestamp() * 1000):012x}{stem[12:]}"
    await partitions.ensure(engine, {partitions.day_of(ids.notification_id_at(stem, 0))}, _KNOWN_DAYS)
    return stem


def _records(
    target: JobTarget, stem: str, first: int, rows: list[JobRow], created_at: datetime
) -> list[tuple[Any, ...]]:
    dumps = orjson.dumps
    head = ids.notification_id_at(stem, 0)[:-6]
    service, template, version = target.service_id, target.template_id, target.template_version
    kind, reference, job = target.template_type, target.reference, target.job_id
    return [
        (
            f"{head}{index:06x}", service, row.to, dumps(row.personalisation).decode(), template, version,
            created_at, created_at, None, kind, reference, job,
        )
        for index, row in enumerate(rows, first)
    ]  # fmt: skip


async def copy_rows(
    raw: Any, target: JobTarget, stem: str, batches: AsyncIterator[list[JobRow]], created_at: datetime
) -> int:
    """COPY a job's rows into `notifications` on `raw` (an asyncpg connection in a transaction); return how many.

    The next batch is read while Postgres writes the previous one. Should reading raise (a bad row, the client
    gone), the COPY in flight is awaited first, so the connection is left idle for the caller's rollback.
    """
    if not raw.is_in_transaction():  # each COPY would commit on its own: the job would not be all or nothing
        raise RuntimeError("a job's rows are COPYed inside a transaction")
    count = 0
    copying: asyncio.Future[Any] | None = None
    try:
        async for batch in batches:
            records = _records(target, stem, count, batch, created_at)
            count += len(batch)
            if copying is not None:
                await copying
            copying = asyncio.ensure_future(
                raw.copy_records_to_table("notifications", records=records, columns=JOB_COLUMNS)
            )
    except BaseException:
        if copying is not None:
            await asyncio.gather(copying, return_exceptions=True)
        raise
    if copying is not None:
        await copying
    return count


async def save_file(conn: AsyncConnection, job_id: UUID, batches: AsyncIterator[list[JobRow]]) -> int:
    """Keep a scheduled job's rows in `job_files`, one chunk a batch; return how many rows."""
    count = 0
    seq = 0
    async for batch in batches:
        chunk = orjson.dumps([(row.to, row.personalisation) for row in batch])
        await conn.execute(
            text("INSERT INTO job_files (job_id, seq, chunk) VALUES (:job_id, :seq, :chunk)"),
            {"job_id": job_id, "seq": seq, "chunk": chunk},
        )
        seq += 1
        count += len(batch)
    return count


async def file_batches(conn: AsyncConnection, job_id: UUID) -> AsyncIterator[list[JobRow]]:
    """Yield a scheduled job's kept rows in batches, in their order, one chunk at a time."""
    query = text("SELECT chunk FROM job_files WHERE job_id = :job_id AND seq = :seq")
    seq = 0
    number = 1
    while (chunk := (await conn.execute(query, {"job_id": job_id, "seq": seq})).scalar_one_or_none()) is not None:
        batch = [JobRow(number + index, to, values) for index, (to, values) in enumerate(orjson.loads(chunk))]
        number += len(batch)
        seq += 1
        yield batch


async def delete_file(conn: AsyncConnection, job_id: UUID) -> None:
    """Drop a job's kept rows (queued, or the job cancelled)."""
    await conn.execute(text("DELETE FROM job_files WHERE job_id = :job_id"), {"job_id": job_id})
