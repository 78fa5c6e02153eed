"""The scheduler: every worker starts due scheduled jobs, each in one Postgres transaction (docs/jobs.md).

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
- A job that fails to store (an error, not a crash) is rolled back and retried by the next run; the jobs due after
  it wait for it, as they are claimed oldest first.
"""

import logging
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncEngine

from shared import job_store, partitions, queries

logger = logging.getLogger(__name__)

#: How often each worker looks for due jobs (the cron's seconds: a divisor of 60).
SCHEDULER_SECONDS = 5
#: Most jobs one run starts; the next run (SCHEDULER_SECONDS later, on any worker) takes the rest.
MAX_JOBS_PER_RUN = 10
#: arq's limit on one run: a run past it is cancelled and its job rolled back, so it fits the largest job
#: (MAX_JOB_ROWS, 16,000,000 rows at most) on a slow machine.
RUN_TIMEOUT_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class JobRun:
    """A scheduled job this worker stored: its id, its rows and how long the whole transaction took."""

    job_id: UUID
    rows: int
    seconds: float


async def run_due_job(engine: AsyncEngine) -> JobRun | None:
    """Store the job due longest ago in one transaction (claimed, COPYed, its file deleted, `stored`); None if none.

    The stem of the job's ids is made first (its day's partition may need making, in a transaction of its own);
    it is thrown away when no job is due.
    """
    began = time.monotonic()
    async with engine.connect() as conn:
        database_now, _ = await partitions.clocks(conn)
    stem = await job_store.new_stem(engine, database_now)
    async with engine.begin() as conn:
        job = await queries.claim_due_job(conn)
        if job is None:
            return None
        target = job_store.JobTarget(
            job.id, job.service_id, job.template_id, job.template_version, job.template_type, None
        )
        raw = (await conn.get_raw_connection()).driver_connection
        # the file is read on a connection of its own, as `copy_rows` reads the next batch while the previous one
        # is COPYed; it stays as committed at upload: a cancel waits for this job's lock, and only this
        # transaction deletes it
        async with engine.connect() as reader:
            batches = job_store.file_batches(reader, job.id)
            rows = await job_store.copy_rows(raw, target, stem, batches, job.claimed_at)
        if rows != job.notification_count:  # the file holds what the upload counted: a difference is a defect
            logger.error("scheduled job %s: %d rows kept, %d counted at upload", job.id, rows, job.notification_count)
        await job_store.delete_file(conn, job.id)
        await queries.store_claimed_job(conn, job.id, rows)
    return JobRun(job.id, rows, time.monotonic() - began)


async def start_due_jobs(ctx: dict[str, Any]) -> int:
    """Store due jobs one after another (the arq cron) until none is due (at most MAX_JOBS_PER_RUN); return how many."""
    engine: AsyncEngine = ctx["drain"].engine
    started = 0
    while started < MAX_JOBS_PER_RUN and (run := await run_due_job(engine)) is not None:
        started += 1
        logger.info("scheduled job %s stored: %d rows in %.2fs", run.job_id, run.rows, run.seconds)
    return started
