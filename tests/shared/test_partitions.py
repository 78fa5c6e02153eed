"""Day partitions of `notifications`: made ahead and on demand, pruned by GET, dropped by retention; the CLI."""

import logging
import os
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from uuid import UUID

import httpx
import orjson
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import keys, partitions, queries
from shared.codec import encode_notification, join_array
from shared.ids import request_ids
from tests.helpers import Tenant, cli, count_rows, drain_all
from worker.drain import Drain

BASE = "/notifications/v1"


def id_at(moment: datetime) -> str:
    """A UUIDv7 made at `moment`, shaped as the API makes them (the first of its request)."""
    millis = int(moment.timestamp() * 1000)
    random = bytearray(os.urandom(7))
    random[0] = 0x70 | (random[0] & 0x0F)
    random[2] = 0x80 | (random[2] & 0x3F)
    return str(UUID(bytes=millis.to_bytes(6, "big") + bytes(random) + bytes(3)))


async def queue_at(redis: Redis, tenant: Tenant, moment: datetime, count: int = 2) -> list[str]:
    """Queue one request of `count` notifications whose ids were made at `moment` (an inline stream entry)."""
    first = id_at(moment)
    ids = [first[:-6] + f"{index:06x}" for index in range(count)]
    docs = [encode_notification(i, tenant.service_id, f"at-{i}", {"band": "Korn"}, moment) for i in ids]
    await redis.xadd(keys.STREAM, {keys.STREAM_FIELD: join_array(docs)})
    return ids


async def partition_names(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return [partition.name for partition in await partitions.list_partitions(conn)]


@pytest_asyncio.fixture(loop_scope="session")
async def made_partitions(engine: AsyncEngine, redis: Redis) -> AsyncIterator[None]:
    """Partitions as a deployment has them; afterwards, drop the ones a test made outside today's window."""
    await partitions.maintain(engine, redis, retention_days=7)
    before = set(await partition_names(engine))
    yield
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        for name in set(await partition_names(engine)) - before:
            await auto.execute(text(f"DROP TABLE {name}"))


def test_a_day_of_ids_is_one_range() -> None:
    _, ids = request_ids(3)
    day = partitions.day_of(ids[0])
    assert day == datetime.now(UTC).date() or day == datetime.now(UTC).date() - timedelta(days=1)
    low, high = partitions.first_id(day), partitions.first_id(day + timedelta(days=1))
    assert all(low <= UUID(i) < high for i in ids)
    midnight = datetime(2026, 3, 1, tzinfo=UTC)
    assert partitions.day_of(id_at(midnight)) == date(2026, 3, 1)
    assert partitions.day_of(id_at(midnight - timedelta(milliseconds=1))) == date(2026, 2, 28)
    assert str(partitions.first_id(date(2026, 3, 1))).startswith(f"{int(midnight.timestamp() * 1000):012x}"[:8])


async def test_get_by_id_touches_one_partition(
    engine: AsyncEngine, tenant: Tenant, made_partitions: None, client: httpx.AsyncClient
) -> None:
    created = (await client.post(f"{BASE}/", json={"to": "pruned"})).json()
    params = {"id": created["id"], "service_id": str(tenant.service_id)}
    assert len(await partition_names(engine)) >= 5  # yesterday, today and three days ahead

    async with engine.connect() as conn:
        custom = (
            await conn.execute(text("EXPLAIN (FORMAT JSON) " + queries.SELECT_NOTIFICATION.text), params)
        ).scalar()
        await conn.execute(text("SET plan_cache_mode = force_generic_plan"))
        await conn.exec_driver_sql(
            "PREPARE get_one(uuid, uuid) AS "
            + queries.SELECT_NOTIFICATION.text.replace(":id", "$1").replace(":service_id", "$2")
        )
        generic = (
            await conn.exec_driver_sql(
                f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE get_one('{params['id']}', '{params['service_id']}')"
            )
        ).scalar()

    def scanned(plan: object) -> list[str]:
        found: list[str] = []

        def walk(node: object) -> None:
            if isinstance(node, dict):
                if str(node.get("Relation Name", "")).startswith("notifications_p"):
                    found.append(node["Relation Name"])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(orjson.loads(plan) if isinstance(plan, str) else plan)
        return found

    today = partitions.name_of(partitions.day_of(created["id"]))
    assert scanned(custom) == [today]  # pruned when planned
    # a generic plan (as a reused prepared statement gets) prunes when it runs: the others are "Subplans Removed"
    generic_plan = orjson.loads(generic) if isinstance(generic, str) else generic
    assert scanned(generic_plan) == [today]
    assert "Subplans Removed" in orjson.dumps(generic_plan).decode()


async def test_drain_makes_a_missing_partition_for_a_clock_step_forward(
    engine: AsyncEngine, redis: Redis, tenant: Tenant, drain: Drain, made_partitions: None
) -> None:
    future = datetime.now(UTC) + timedelta(days=40)
    assert partitions.name_of(future.date()) not in await partition_names(engine)
    ids = await queue_at(redis, tenant, future)

    assert await drain_all(drain) == 2

    assert partitions.name_of(future.date()) in await partition_names(engine)
    async with engine.connect() as conn:
        stored = (await conn.execute(text("SELECT id::text FROM notifications ORDER BY id"))).scalars().all()
    assert stored == ids


async def test_drain_remakes_a_partition_dropped_under_it(
    engine: AsyncEngine, redis: Redis, tenant: Tenant, drain: Drain, made_partitions: None
) -> None:
    moment = datetime.now(UTC) - timedelta(days=3)
    await queue_at(redis, tenant, moment)
    assert await drain_all(drain) == 2  # makes (or finds) the day's partition and remembers it
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP TABLE {partitions.name_of(moment.date())}"))  # behind the drain's back

    await queue_at(redis, tenant, moment)

    assert await drain_all(drain) == 2  # no dead letter: the drain looked again and made it anew
    assert await count_rows(engine) == 2
    assert await redis.xlen(keys.DEAD_LETTER_STREAM) == 0


async def test_notifications_past_retention_are_stored_all_the_same(
    engine: AsyncEngine, redis: Redis, tenant: Tenant, drain: Drain, client: httpx.AsyncClient, made_partitions: None
) -> None:
    # answered 201 long ago (a backlog held past RETENTION_DAYS): accepted, so stored, its day's partition made again
    old = datetime.now(UTC) - timedelta(days=drain.settings.retention_days + 2)
    old_ids = await queue_at(redis, tenant, old)
    fresh = await queue_at(redis, tenant, datetime.now(UTC))

    assert await drain_all(drain) == 4

    async with engine.connect() as conn:
        stored = (await conn.execute(text("SELECT id::text FROM notifications ORDER BY id"))).scalars().all()
    assert stored == old_ids + fresh
    assert partitions.name_of(old.date()) in await partition_names(engine)
    await redis.flushdb()
    assert (await client.get(f"{BASE}/{old_ids[0]}")).status_code == 200
    assert (await client.get(f"{BASE}/{fresh[0]}")).status_code == 200


async def test_maintain_never_drops_the_day_of_a_queued_notification(
    engine: AsyncEngine, redis: Redis, tenant: Tenant, drain: Drain, made_partitions: None
) -> None:
    ten_days_ago = datetime.now(UTC) - timedelta(days=10)
    old_day = partitions.name_of(ten_days_ago.date())
    await queue_at(redis, tenant, ten_days_ago)
    assert await drain_all(drain) == 2  # its day's partition made
    await queue_at(redis, tenant, ten_days_ago)  # another of that day, still queued

    held = await partitions.maintain(engine, redis, retention_days=7)

    assert held.dropped == []
    assert held.refused == ""
    assert old_day in await partition_names(engine)
    assert await drain_all(drain) == 2
    assert await count_rows(engine) == 4
    assert (await partitions.maintain(engine, redis, retention_days=7)).dropped == [old_day]  # none queued now


def test_queued_days_are_read_from_the_entry_id_and_the_notification_ids(tenant: Tenant) -> None:
    ten_days_ago = datetime.now(UTC) - timedelta(days=10)
    old_id = id_at(ten_days_ago)
    shard = keys.layout().shards[0]
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    entry_id = f"{now_ms}-0".encode()
    named = {keys.STREAM_KEY_FIELD: shard.cache_key(str(tenant.service_id), old_id).encode()}
    doc = encode_notification(old_id, tenant.service_id, "x", {}, ten_days_ago)
    inline = {keys.STREAM_FIELD: join_array([doc])}

    today = datetime.now(UTC).date()
    assert partitions.queued_days(entry_id, named) == {today, ten_days_ago.date()}
    assert partitions.queued_days(entry_id, inline) == {today, ten_days_ago.date()}
    assert partitions.queued_days(entry_id, None) == {today}


async def test_maintain_with_a_clock_far_from_the_databases_drops_nothing(
    engine: AsyncEngine,
    redis: Redis,
    tenant: Tenant,
    drain: Drain,
    made_partitions: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await queue_at(redis, tenant, datetime.now(UTC))
    await queue_at(redis, tenant, datetime.now(UTC) - timedelta(days=1))
    assert await drain_all(drain) == 4
    before = await partition_names(engine)
    ahead = datetime.now(UTC) + timedelta(days=9)

    with caplog.at_level(logging.WARNING, logger="shared.partitions"):
        done = await partitions.maintain(engine, redis, retention_days=7, now=ahead)

    assert done.dropped == []
    assert "clock" in done.refused
    assert "dropped nothing" in caplog.text
    assert await partition_names(engine) == before
    assert await count_rows(engine) == 4
    # a skew within MAX_CLOCK_SKEW is no reason to refuse
    near = datetime.now(UTC) + partitions.MAX_CLOCK_SKEW / 2
    assert (await partitions.maintain(engine, redis, retention_days=7, now=near)).refused == ""


async def test_maintain_drops_expired_days_and_their_notifications_are_404(
    engine: AsyncEngine, redis: Redis, tenant: Tenant, drain: Drain, client: httpx.AsyncClient, made_partitions: None
) -> None:
    ten_days_ago = datetime.now(UTC) - timedelta(days=10)
    old_day = partitions.name_of(ten_days_ago.date())
    keep_all = drain.settings.model_copy(update={"retention_days": 0})
    old_ids = await queue_at(redis, tenant, ten_days_ago)
    assert await drain_all(Drain(redis, engine, keep_all, "keeper")) == 2  # RETENTION_DAYS=0 stores it
    assert (await client.get(f"{BASE}/{old_ids[0]}")).status_code == 200

    kept = await partitions.maintain(engine, redis, retention_days=0)
    assert kept.dropped == []
    done = await partitions.maintain(engine, redis, retention_days=7)

    assert done.dropped == [old_day]
    assert not done.skipped
    assert old_day not in await partition_names(engine)
    await redis.flushdb()
    missing = await client.get(f"{BASE}/{old_ids[0]}")
    assert missing.status_code == 404
    assert missing.json()["detail"]


async def test_only_one_process_maintains_at_a_time(engine: AsyncEngine, redis: Redis, made_partitions: None) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": partitions.MAINTAIN_LOCK})
        try:
            busy = await partitions.maintain(engine, redis, retention_days=7)
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": partitions.MAINTAIN_LOCK})
    assert busy.skipped
    assert busy.created == busy.dropped == []
    assert not (await partitions.maintain(engine, redis, retention_days=7)).skipped


async def test_maintain_makes_the_days_ahead_of_the_databases_today(
    engine: AsyncEngine, redis: Redis, made_partitions: None
) -> None:
    async with engine.connect() as conn:
        database_today = (await conn.execute(text("SELECT (now() AT TIME ZONE 'UTC')::date"))).scalar_one()
        last = partitions.name_of(database_today + timedelta(days=partitions.DAYS_AHEAD))
        await conn.execute(text(f"DROP TABLE {last}"))
        await conn.commit()
    ahead = datetime.now(UTC) + timedelta(days=20)

    done = await partitions.maintain(engine, redis, retention_days=7, now=ahead)  # by Postgres's clock, not this one

    assert done.created == [last]
    expected = [partitions.name_of(database_today + timedelta(days=d)) for d in range(-1, partitions.DAYS_AHEAD + 1)]
    assert set(expected) <= set(await partition_names(engine))
    assert not {partitions.name_of(ahead.date() + timedelta(days=d)) for d in range(4)} & set(
        await partition_names(engine)
    )


def test_cli_lists_and_maintains_partitions(worker_env: dict[str, str], engine: object, redis: object) -> None:
    maintained = cli({**worker_env, "RETENTION_DAYS": "7"}, "partitions", "maintain")
    listed = cli(worker_env, "partitions", "list")

    assert maintained.returncode == 0, maintained.stderr
    assert "RETENTION_DAYS=7" in maintained.stdout
    assert listed.returncode == 0, listed.stderr
    today = partitions.name_of(datetime.now(UTC).date())
    line = next(line for line in listed.stdout.splitlines() if line.startswith(f"name={today}"))
    assert f"FROM ('{partitions.first_id(datetime.now(UTC).date())}')" in line
    assert "approximate_rows=" in line


async def test_cli_with_a_clock_9_days_ahead_drops_nothing(
    worker_env: dict[str, str],
    engine: AsyncEngine,
    redis: Redis,
    tenant: Tenant,
    drain: Drain,
    made_partitions: None,
    clock_ahead: dict[str, str],
) -> None:
    stored = await queue_at(redis, tenant, datetime.now(UTC), count=50)
    assert await drain_all(drain) == 50
    before = await partition_names(engine)

    maintained = cli({**worker_env, **clock_ahead, "RETENTION_DAYS": "7"}, "partitions", "maintain")

    assert maintained.returncode == 1, maintained
    assert "dropped nothing" in maintained.stderr
    assert "MAX_CLOCK_SKEW" in maintained.stderr
    assert await partition_names(engine) == before
    assert await count_rows(engine) == len(stored)
