"""The scheduler: the workers start due scheduled jobs, each in one Postgres transaction (docs/jobs.md).

A scheduled job's rows wait in `job_files` (the API kept them at upload) until its `scheduled_for`. An arq cron
(`start_due_jobs`, every SCHEDULER_SECONDS on whichever worker takes the tick, and at each worker's start-up) runs
`run_due_job` until no job is due (at most MAX_JOBS_PER_RUN jobs a run). One job is one transaction: claim it
(`queries.claim_due_job`: due by Postgres's clock, the row locked, `pending`), COPY its kept rows as notifications
(`shared.job_store`, the same COPY the API uses for a job that runs at once), delete its file, mark it `stored`,
commit. So:

- A job runs once, whatever the number of workers: a claimed job's row stays locked until commit, and other
  schedulers skip it (`SKIP LOCKED`); once committed it is no longer `scheduled`.
- A worker killed (or timed out) mid-job stores nothing of it: Postgres rolls the transaction back, and the job is
  `scheduled` and due again, taken by the next run of any worker. Postgres, not arq's Redis, records what is due:
  a lost arq Redis forgets no job.
- A worker's own clock decides nothing: due is Postgres's `now()`, and the job's ids and `created_at` are dated by
  Postgres's clock too (a worker days behind would otherwise write into a day that maintenance drops).
- A job that fails to store (an error, not a crash) is rolled back, logged and left for the next run; the run goes
  on with the jobs due after it, so one bad job holds back no other.
"""

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared import job_store, queries

logger = logging.getLogger(__name__)

#: How often the workers look for due jobs: one run a tick, on whichever worker takes it (a divisor of 60).
SCHEDULER_SECONDS = 5
#: Most jobs one run tries; the next run (SCHEDULER_SECONDS later, on any worker) takes the rest.
MAX_JOBS_PER_RUN = 10
#: arq's limit on one run: a run past it is cancelled and its job rolled back, so it fits the largest job
#: (MAX_JOB_ROWS, 16,000,000 rows at most) on a slow machine.
RUN_TIMEOUT_SECONDS = 3600


class JobNotStoredError(Exception):
    """A claimed job failed to store: its transaction was rolled back, and it is due again (`job_id` says which)."""

    def __init__(self, job_id: UUID) -> None:
        super().__init__(f"scheduled job {job_id} was not stored")
        self.job_id = job_id


@dataclass(frozen=True, slots=True)
class JobRun:
    """A scheduled job this worker stored: its id, its rows and how long the whole transaction took."""

    job_id: UUID
    rows: int
    seconds: float


async def run_due_job(engine: AsyncEngine, skip: Collection[UUID] = ()) -> JobRun | None:
    """Store the job due longest ago in one transaction (claimed, COPYed, its file deleted, `stored`); None if none.

    Once a job is claimed, the stem of its ids is made from the claim's `now()` (Postgres's clock; its day's
    partition made if missing, in a transaction of its own). Jobs in `skip` are left alone.

    Raises:
        JobNotStoredError: a job was claimed but not stored (rolled back); the error's cause says why.
    """
    began = time.monotonic()
    async with engine.begin() as conn:
        job = await queries.claim_due_job(conn, skip)
        if job is None:
            return None
        try:
            stem = await job_store.new_stem(engine, job.claimed_at)
            rows = await _store(engine, conn, job, stem)
        except Exception as exc:  # the transaction rolls back as this leaves it
            raise JobNotStoredError(job.id) from exc
    return JobRun(job.id, rows, time.monotonic() - began)


async def _store(engine: AsyncEngine, conn: AsyncConnection, job: Row[Any], stem: str) -> int:
    """COPY a claimed job's kept rows as its notifications, delete its file, mark it `stored`; return the rows."""
    target = job_store.JobTarget(
        job.id, job.service_id, job.template_id, job.template_version, job.template_type, job.reference
    )
    raw = (await conn.get_raw_connection()).driver_connection
    # the file is read on a connection of its own, as `copy_rows` reads the next batch while the previous one is
    # COPYed; it stays as committed at upload: a cancel waits for this job's lock, and only this transaction
    # deletes it
    async with engine.connect() as reader:
        rows = await job_store.copy_rows(raw, target, stem, job_store.file_batches(reader, job.id), job.claimed_at)
    if rows != job.notification_count:  # the file holds what the upload counted: a difference is a defect
        logger.error("scheduled job %s: %d rows kept, %d counted at upload", job.id, rows, job.notification_count)
    await job_store.delete_file(conn, job.id)
    await queries.store_claimed_job(conn, job.id, rows)
    return rows


async def start_due_jobs(ctx: dict[str, Any]) -> int:
    """Store due jobs one after another (the arq cron) until none is due, MAX_JOBS_PER_RUN stored at most.

    Returns how many were stored. A job that fails is logged and skipped for the rest of the run, and does not count
    against MAX_JOBS_PER_RUN: failing jobs due first never hold back the ones due after them (the run ends when
    every due job was stored or failed).
    """
    engine: AsyncEngine = ctx["drain"].engine
    stored = 0
    failed: set[UUID] = set()
    while stored < MAX_JOBS_PER_RUN:
        try:
            run = await run_due_job(engine, failed)
        except JobNotStoredError as exc:
            logger.error("%s (rolled back, due again): %r", exc, exc.__cause__, exc_info=exc.__cause__)
            failed.add(exc.job_id)
            continue
        if run is None:
            break
        stored += 1
        logger.info("scheduled job %s stored: %d rows in %.2fs", run.job_id, run.rows, run.seconds)
    return stored
