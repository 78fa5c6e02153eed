"""The jobs table's queries against Postgres: create, read within the service, list newest first, cancel."""

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import jobs, partitions, queries, tenancy
from shared.jobs import new_job_id

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


async def _template(engine: AsyncEngine, service: str, template_type: str = "sms") -> tuple[UUID, UUID]:
    created = await tenancy.create_service(engine, service)
    template_id = tenancy.new_id()
    async with engine.begin() as conn:
        await queries.insert_template(conn, template_id, created.id, "t", None, "((code))", NOW, template_type)
    return created.id, template_id


async def _job(
    engine: AsyncEngine, template_id: UUID, status: str = jobs.QUEUED, scheduled_for: datetime | None = None
) -> UUID:
    job_id = new_job_id()
    async with engine.begin() as conn:
        await queries.insert_job(conn, job_id, "january", template_id, 1, 3, status, scheduled_for, NOW, None)
    return job_id


async def test_a_job_is_read_with_its_templates_service_and_type_and_only_by_its_service(engine: AsyncEngine) -> None:
    service, template = await _template(engine, "jobs-a")
    other, _ = await _template(engine, "jobs-b")
    job_id = await _job(engine, template)
    assert job_id.version == 7
    async with engine.connect() as conn:
        job = await queries.get_job(conn, service, job_id)
        assert await queries.get_job(conn, other, job_id) is None
    assert job is not None
    assert (job.id, job.name, job.template_id, job.template_version, job.notification_count, job.status) == (
        job_id, "january", template, 1, 3, "queued",
    )  # fmt: skip
    assert (job.service_id, job.template_type, job.created_at, job.scheduled_for, job.cancelled_at) == (
        service, "sms", NOW, None, None,
    )  # fmt: skip


async def test_a_services_jobs_are_listed_newest_first_a_page_at_a_time(engine: AsyncEngine) -> None:
    service, template = await _template(engine, "jobs-a")
    other, other_template = await _template(engine, "jobs-b", "email")
    made = [await _job(engine, template) for _ in range(5)]
    await _job(engine, other_template)
    async with engine.connect() as conn:
        first = await queries.list_jobs(conn, service, 2)
        rest = await queries.list_jobs(conn, service, 10, older_than=first[-1].id)
        assert len(await queries.list_jobs(conn, other, 10)) == 1
    assert [job.id for job in first + rest] == made[::-1]


async def test_only_a_scheduled_job_not_yet_due_is_cancelled(engine: AsyncEngine) -> None:
    service, template = await _template(engine, "jobs-a")
    other, _ = await _template(engine, "jobs-b")
    later = await _job(engine, template, jobs.SCHEDULED, NOW + timedelta(hours=1))
    due = await _job(engine, template, jobs.SCHEDULED, NOW - timedelta(seconds=1))
    started = await _job(engine, template, jobs.PENDING, NOW + timedelta(hours=1))
    async with engine.begin() as conn:
        assert await queries.cancel_job(conn, other, later, NOW) == (None, False)
        job, cancelled = await queries.cancel_job(conn, service, later, NOW)
        assert cancelled
        assert job is not None
        assert (job.status, job.cancelled_at) == ("cancelled", NOW)
        again, cancelled = await queries.cancel_job(conn, service, later, NOW)
        assert again is not None
        assert (again.status, cancelled) == ("cancelled", False)
        for kept, status in ((due, "scheduled"), (started, "pending")):
            job, cancelled = await queries.cancel_job(conn, service, kept, NOW)
            assert job is not None
            assert (job.status, job.cancelled_at, cancelled) == (status, None, False)


async def test_a_cancel_does_not_wait_for_a_scheduler_holding_the_job_and_cancels_nothing(
    engine: AsyncEngine,
) -> None:
    service, template = await _template(engine, "jobs-a")
    job_id = await _job(engine, template, jobs.SCHEDULED, NOW + timedelta(hours=1))
    async with engine.connect() as scheduler:  # a scheduler storing the job holds its row for the whole run
        await scheduler.begin()
        await scheduler.exec_driver_sql(f"UPDATE jobs SET status = 'pending' WHERE id = '{job_id}'")
        async with engine.begin() as conn:
            job, cancelled = await asyncio.wait_for(queries.cancel_job(conn, service, job_id, NOW), 30)
            assert await conn.scalar(text("SELECT 1")) == 1  # the caller's transaction goes on
        assert not cancelled
        assert job is not None
        assert job.status == "scheduled"  # as committed: the run is not over
        await scheduler.commit()
    async with engine.begin() as conn:
        job, cancelled = await queries.cancel_job(conn, service, job_id, NOW)
    assert (job.status, cancelled) == ("pending", False)


async def _database_now(engine: AsyncEngine) -> datetime:
    async with engine.connect() as conn:
        return (await partitions.clocks(conn))[0]


async def test_schedulers_at_once_each_claim_a_different_due_job_and_a_rollback_gives_it_back(
    engine: AsyncEngine,
) -> None:
    _, template = await _template(engine, "jobs-a")
    now = await _database_now(engine)
    first = await _job(engine, template, jobs.SCHEDULED, now - timedelta(minutes=2))
    second = await _job(engine, template, jobs.SCHEDULED, now - timedelta(minutes=1))
    await _job(engine, template, jobs.SCHEDULED, now + timedelta(minutes=10))  # not due
    async with engine.connect() as one, engine.connect() as two:
        await one.begin()
        await two.begin()
        taken = await queries.claim_due_job(one)
        other = await queries.claim_due_job(two)
        assert taken is not None
        assert other is not None
        assert (taken.id, taken.status, other.id, other.status) == (first, "pending", second, "pending")
        assert taken.claimed_at >= now  # Postgres's clock, as the claim read it
        async with engine.connect() as three:
            assert await queries.claim_due_job(three) is None  # the rest is taken or not due
        await one.rollback()  # a scheduler that died: its job is due again
        await queries.store_claimed_job(two, second, 3)
        await two.commit()
    async with engine.begin() as conn:
        again = await queries.claim_due_job(conn)
        assert again is not None
        assert again.id == first
        assert (await queries.get_job(conn, again.service_id, second)).status == "stored"  # type: ignore[union-attr]


async def test_a_job_is_claimed_only_once_due_by_postgres_clock(engine: AsyncEngine) -> None:
    _, template = await _template(engine, "jobs-a")
    now = await _database_now(engine)
    soon = await _job(engine, template, jobs.SCHEDULED, now + timedelta(minutes=10))
    async with engine.begin() as conn:
        assert await queries.claim_due_job(conn) is None
        # Postgres's clock moved past it (as the scheduler's tests move it: by the job's time, never the worker's)
        await conn.execute(
            text("UPDATE jobs SET scheduled_for = now() - interval '1 second' WHERE id = :id"), {"id": soon}
        )
        claimed = await queries.claim_due_job(conn)
    assert claimed is not None
    assert claimed.id == soon


async def test_a_claim_passes_over_the_jobs_it_is_told_to_skip(engine: AsyncEngine) -> None:
    _, template = await _template(engine, "jobs-a")
    now = await _database_now(engine)
    failing = await _job(engine, template, jobs.SCHEDULED, now - timedelta(minutes=2))
    next_due = await _job(engine, template, jobs.SCHEDULED, now - timedelta(minutes=1))
    async with engine.begin() as conn:
        claimed = await queries.claim_due_job(conn, {failing})
        assert claimed is not None
        assert claimed.id == next_due
        assert await queries.claim_due_job(conn, {failing, next_due}) is None


async def test_job_keys_past_the_ttl_are_deleted_and_newer_ones_kept(engine: AsyncEngine) -> None:
    service, template = await _template(engine, "jobs-a")
    job_id = await _job(engine, template)
    async with engine.begin() as conn:
        await queries.insert_job_key(conn, service, "old", job_id, b"f")
        await queries.insert_job_key(conn, service, "new", job_id, b"f")
        await conn.execute(text("UPDATE job_keys SET created_at = now() - interval '2 days' WHERE key = 'old'"))
    async with engine.begin() as conn:
        assert await queries.delete_expired_job_keys(conn, 86_400) == 1
        assert (await conn.execute(text("SELECT key FROM job_keys"))).scalars().all() == ["new"]
