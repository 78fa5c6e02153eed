"""The scheduler (worker/scheduler.py): a scheduled job waits, then one worker stores every row once, on time.

Time is Postgres's: a job is made due by moving its `scheduled_for` into Postgres's past, never by waiting.
"""

import asyncio
import re
import signal
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import job_store, jobs, partitions, queries
from shared.recipient_csv import JobRow
from tests.helpers import Tenant, Workers, count_rows, stop, wait_for
from worker.drain import Drain
from worker.scheduler import MAX_JOBS_PER_RUN, start_due_jobs

JOBS = "/notifications/v1/jobs"
BULK = "/v2/notifications/bulk"
SMS_TEMPLATE = {"name": "code", "type": "sms", "body": "Your code is ((code))"}
#: A scheduler run that ended (arq's line for a finished job: `← <function> ● <result>`).
RUN_ENDED = re.compile(r"← cron:start_due_jobs ● (\d+)")


@pytest.fixture
def workers(venv_bin: Path, worker_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    """Worker processes against the test servers, killed after the test if still running."""
    pool = Workers(venv_bin, worker_env, tmp_path)
    yield pool
    pool.stop_all()


@pytest.fixture
async def template(client: httpx.AsyncClient, tenant: Tenant) -> UUID:
    """An sms template of `tenant`'s service."""
    made = await client.post("/templates/v1/", json=SMS_TEMPLATE, headers=tenant.headers)
    assert made.status_code == 201, made.text
    return UUID(made.json()["id"])


def _csv(rows: int, prefix: str = "+4477009") -> bytes:
    return ("phone number,code\n" + "".join(f"{prefix}{i:05d},{i}\n" for i in range(rows))).encode()


async def _make_due(engine: AsyncEngine, *job_ids: UUID | str) -> None:
    """Move jobs' time into Postgres's past (the clock the scheduler reads)."""
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE jobs SET scheduled_for = now() - interval '1 second' WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": [str(job_id) for job_id in job_ids]},
        )


async def _status(engine: AsyncEngine, job_id: UUID | str) -> str:
    async with engine.connect() as conn:
        found = await conn.execute(text("SELECT status FROM jobs WHERE id = :id"), {"id": str(job_id)})
        return str(found.scalar_one())


async def _kept_chunks(engine: AsyncEngine, job_id: UUID | str) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(text("SELECT count(*) FROM job_files WHERE job_id = :id"), {"id": str(job_id)})
        return int(found.scalar_one())


async def _stored(engine: AsyncEngine, job_id: UUID | str) -> tuple[int, int, list[str]]:
    """A job's notifications: how many, how many distinct ids, and their recipients, sorted."""
    async with engine.connect() as conn:
        counted = await conn.execute(
            text("SELECT count(*), count(DISTINCT id) FROM notifications WHERE job_id = :id"), {"id": str(job_id)}
        )
        total, distinct = counted.one()
        found = await conn.execute(text('SELECT "to" FROM notifications WHERE job_id = :id'), {"id": str(job_id)})
        return int(total), int(distinct), sorted(found.scalars())


def _runs_ended(log: str) -> int:
    return len(RUN_ENDED.findall(log))


async def _schedule_directly(engine: AsyncEngine, template_id: UUID, rows: int, prefix: str) -> UUID:
    """A job as the API keeps a scheduled one (its file in `job_files`, `scheduled` an hour ahead), made fast."""

    async def batches() -> AsyncIterator[list[JobRow]]:
        for first in range(0, rows, job_store.JOB_BATCH_ROWS):
            count = min(job_store.JOB_BATCH_ROWS, rows - first)
            yield [JobRow(first + i + 1, f"{prefix}{first + i:07d}", {"code": str(i)}) for i in range(count)]

    job_id = jobs.new_job_id()
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(text("SELECT 1"))  # job_store's writes run in an open transaction
        kept = await job_store.save_file(conn, job_id, batches())
        await queries.insert_job(
            conn, job_id, "direct", template_id, 1, kept, jobs.SCHEDULED, now + timedelta(hours=1), now, None
        )
    return job_id


async def test_a_scheduled_job_waits_then_one_worker_stores_every_row_once(
    client: httpx.AsyncClient,
    notify: httpx.AsyncClient,
    template: UUID,
    tenant: Tenant,
    engine: AsyncEngine,
    workers: Workers,
) -> None:
    when = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    native = await client.post(
        JOBS,
        params={"template_id": str(template), "name": "later", "scheduled_for": when.isoformat()},
        content=_csv(300),
        headers={**tenant.headers, "Content-Type": "text/csv"},
    )
    assert native.status_code == 201, native.text
    native_id = native.json()["id"]
    rows = [["phone number", "code"], *([f"+4477008{i:05d}", str(i)] for i in range(20))]
    bulk = await notify.post(
        BULK,
        json={
            "name": "gc",
            "template_id": str(template),
            "rows": rows,
            "scheduled_for": when.isoformat(),
            "reference": "batch-7",
        },
    )
    assert bulk.status_code == 201, bulk.text
    bulk_id = bulk.json()["data"]["id"]

    worker = workers.start()

    async def ran_twice() -> bool:  # at start-up, then on the cron: both found nothing due
        return _runs_ended(workers.log(worker)) >= 2

    await wait_for(ran_twice)
    assert (await _status(engine, native_id), await _status(engine, bulk_id)) == ("scheduled", "scheduled")
    assert await count_rows(engine) == 0
    assert await _kept_chunks(engine, native_id) == 1

    await _make_due(engine, native_id, bulk_id)

    async def both_stored() -> bool:
        return {await _status(engine, native_id), await _status(engine, bulk_id)} == {"stored"}

    await wait_for(both_stored)
    assert await stop(worker) == 0, workers.log(worker)
    log = workers.log(worker)
    assert f"scheduled job {native_id} stored: 300 rows" in log, log
    assert f"scheduled job {bulk_id} stored: 20 rows" in log, log
    assert await _stored(engine, native_id) == (300, 300, sorted(f"+4477009{i:05d}" for i in range(300)))
    assert await _stored(engine, bulk_id) == (20, 20, sorted(f"+4477008{i:05d}" for i in range(20)))
    assert await count_rows(engine) == 320
    assert await count_rows(engine, "job_files") == 0

    shown = (await client.get(f"{JOBS}/{native_id}", headers=tenant.headers)).json()
    assert (shown["status"], shown["rows"], shown["queued"], shown["stored"]) == ("stored", 300, 300, 300)
    gc = (await notify.get(f"{BULK}/{bulk_id}")).json()["data"]
    assert (gc["job_status"], gc["statistics"]) == ("finished", [{"status": "created", "count": 20}])
    async with engine.connect() as conn:
        first = await conn.execute(text("SELECT id FROM notifications WHERE job_id = :id LIMIT 1"), {"id": bulk_id})
        notification_id = first.scalar_one()
    got = await notify.get(f"/v2/notifications/{notification_id}")
    assert got.status_code == 200, got.text
    assert (got.json()["job_id"], got.json()["template"]["id"]) == (bulk_id, str(template))
    assert got.json()["reference"] == "batch-7"  # the bulk send's reference, kept with the job until it ran


async def test_schedulers_running_at_once_store_each_job_once(
    template: UUID, engine: AsyncEngine, drain: Drain
) -> None:
    made = [await _schedule_directly(engine, template, 4000, f"+44{n}") for n in range(6)]
    await _make_due(engine, *made)

    # every run is awaited to its end, even when one fails (a run left going would outlive the test)
    started = await asyncio.gather(*(start_due_jobs({"drain": drain}) for _ in range(3)), return_exceptions=True)

    assert all(isinstance(run, int) for run in started), started
    assert sum(started) == 6, started  # type: ignore[arg-type]
    for n, job_id in enumerate(made):
        assert await _status(engine, job_id) == "stored"
        assert await _stored(engine, job_id) == (4000, 4000, [f"+44{n}{i:07d}" for i in range(4000)])
    assert await count_rows(engine) == 24_000
    assert await count_rows(engine, "job_files") == 0
    assert await start_due_jobs({"drain": drain}) == 0


async def test_a_cancelled_job_is_never_run(
    client: httpx.AsyncClient, template: UUID, engine: AsyncEngine, drain: Drain
) -> None:
    when = datetime.now(UTC) + timedelta(hours=1)
    sent = await client.post(
        JOBS,
        params={"template_id": str(template), "scheduled_for": when.isoformat()},
        content=_csv(10),
        headers={"Content-Type": "text/csv"},
    )
    assert sent.status_code == 201, sent.text
    job_id = sent.json()["id"]
    cancelled = await client.post(f"{JOBS}/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    await _make_due(engine, job_id)  # its time has come: it stays cancelled

    assert await start_due_jobs({"drain": drain}) == 0
    assert await _status(engine, job_id) == "cancelled"
    assert await count_rows(engine) == 0
    assert await count_rows(engine, "job_files") == 0


async def test_a_job_that_fails_to_store_is_rolled_back_and_holds_back_no_other(
    template: UUID, engine: AsyncEngine, drain: Drain, caplog: pytest.LogCaptureFixture
) -> None:
    broken = await _schedule_directly(engine, template, 6000, "+441")
    # more failing jobs than a run stores, all due before the good one: none may hold it back
    others = [await _schedule_directly(engine, template, 1, f"+443{n:02d}") for n in range(MAX_JOBS_PER_RUN)]
    good = await _schedule_directly(engine, template, 10, "+442")
    async with engine.begin() as conn:  # its second chunk unreadable, after a first one COPYed
        await conn.execute(
            text("UPDATE job_files SET chunk = 'not json' WHERE job_id = :id AND seq = 1"), {"id": broken}
        )
        await conn.execute(text("UPDATE job_files SET chunk = 'not json' WHERE job_id = ANY(:ids)"), {"ids": others})
        await conn.execute(
            text("UPDATE jobs SET scheduled_for = now() - interval '1 minute' WHERE id = ANY(:ids)"),
            {"ids": [broken, *others]},
        )
    await _make_due(engine, good)  # due after the broken ones, which are claimed first

    assert await start_due_jobs({"drain": drain}) == 1

    assert (await _status(engine, broken), await _status(engine, good)) == ("scheduled", "stored")
    assert await count_rows(engine) == 10  # none of the broken job's first chunk
    assert await _kept_chunks(engine, broken) == 2
    assert f"scheduled job {broken} was not stored (rolled back, due again)" in caplog.text
    assert await start_due_jobs({"drain": drain}) == 0  # tried again at the next run, and failing again


async def test_a_worker_whose_clock_is_days_ahead_starts_no_job_before_its_time_by_postgres(
    template: UUID, engine: AsyncEngine, workers: Workers, clock_ahead: dict[str, str]
) -> None:
    later = await _schedule_directly(engine, template, 50, "+441")  # an hour ahead: due by the worker's clock
    due = await _schedule_directly(engine, template, 50, "+442")
    await _make_due(engine, due)

    worker = workers.start(**clock_ahead)

    async def due_stored() -> bool:
        return await _status(engine, due) == "stored"

    await wait_for(due_stored)  # the worker runs the scheduler, and takes what is due by Postgres's clock
    runs = _runs_ended(workers.log(worker))

    async def ran_twice_more() -> bool:
        return _runs_ended(workers.log(worker)) >= runs + 2

    await wait_for(ran_twice_more)
    assert await stop(worker) == 0, workers.log(worker)
    assert await _status(engine, later) == "scheduled", workers.log(worker)
    assert (await _stored(engine, later))[0] == 0
    assert await _kept_chunks(engine, later) == 1
    async with engine.connect() as conn:
        database_now, _ = await partitions.clocks(conn)
        found = await conn.execute(text("SELECT id, created_at FROM notifications WHERE job_id = :id"), {"id": due})
        stored = found.all()
    assert len(stored) == 50
    for notification_id, created_at in stored:  # dated by Postgres's clock, not the worker's 9 days ahead
        assert partitions.day_of(notification_id) == partitions.today(database_now)
        assert abs(created_at - database_now) < timedelta(minutes=10)


#: A scheduler's statement of the job's transaction, seen from another session: a COPY running, or its file's
#: DELETE (after the last COPY) waiting for the test's lock on the file.
MID_JOB = text(
    """
    SELECT count(*) FROM pg_stat_activity
    WHERE pid <> pg_backend_pid() AND state <> 'idle' AND (
        (query LIKE 'COPY %notifications%' AND state = 'active')
        OR (query LIKE 'DELETE FROM job_files%' AND wait_event_type = 'Lock'))
    """
)


async def test_a_worker_killed_mid_job_leaves_it_due_and_a_fresh_worker_stores_every_row_once(
    template: UUID, engine: AsyncEngine, workers: Workers
) -> None:
    rows = 200_000
    job_id = await _schedule_directly(engine, template, rows, "+44")
    await _make_due(engine, job_id)
    async with engine.connect() as blocker:
        # The job's transaction cannot commit while this lock is held (it deletes the file last), so the kill lands
        # mid-job however fast or slow the machine is.
        await blocker.begin()
        await blocker.execute(
            text("SELECT 1 FROM job_files WHERE job_id = :id AND seq = 0 FOR KEY SHARE"), {"id": job_id}
        )
        doomed = workers.start()

        async def mid_job() -> bool:
            async with engine.connect() as watcher:
                return bool((await watcher.execute(MID_JOB)).scalar_one())

        await wait_for(mid_job, limit=120)
        assert await stop(doomed, signal.SIGKILL) == -signal.SIGKILL
        await blocker.rollback()

    assert await count_rows(engine) == 0
    assert await _kept_chunks(engine, job_id) == rows // job_store.JOB_BATCH_ROWS
    assert "stored:" not in workers.log(doomed)
    rescuer = workers.start()

    async def stored() -> bool:
        return await _status(engine, job_id) == "stored"

    await wait_for(stored, limit=300)
    assert await stop(rescuer) == 0, workers.log(rescuer)
    assert f"scheduled job {job_id} stored: {rows} rows" in workers.log(rescuer)
    async with engine.connect() as conn:
        counted = await conn.execute(
            text('SELECT count(*), count(DISTINCT id), count(DISTINCT "to") FROM notifications WHERE job_id = :id'),
            {"id": job_id},
        )
        assert tuple(counted.one()) == (rows, rows, rows)
    assert await count_rows(engine) == rows
    assert await count_rows(engine, "job_files") == 0
