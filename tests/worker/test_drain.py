"""The drain in-process: POST → drain → rows in Postgres → GET from Postgres; idempotence; poison entries."""

import asyncio
import contextlib
from datetime import UTC, datetime
from uuid import UUID

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.embedded import free_port
from shared import keys, partitions, queries, redis_client
from shared.codec import encode_notification, join_array
from shared.db import create_engine
from shared.ids import request_ids
from shared.schemas import BRIEF_MULTIPLE_EXAMPLE
from shared.tenancy import new_id
from tests.helpers import count_rows, drain_all, lossy_proxy
from worker.drain import Drain
from worker.main import forget_idle_consumers

BASE = "/notifications/v1"


async def test_post_drain_get_from_postgres(
    client: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, drain: Drain
) -> None:
    single = await client.post(f"{BASE}/", json={"to": "example@gmail.com", "personalization": {"band": "Incubus"}})
    multiple = await client.post(f"{BASE}/multiple", json=BRIEF_MULTIPLE_EXAMPLE)
    accepted = [single.json(), *multiple.json()]

    assert await drain_all(drain) == 3

    async with engine.connect() as conn:
        rows = (await conn.execute(text('SELECT id::text, "to" FROM notifications ORDER BY id'))).all()
        pairs = (
            await conn.execute(text("SELECT p.key, p.value FROM notifications, jsonb_each_text(personalization) AS p"))
        ).all()
    assert sorted(rows) == sorted((item["id"], item["to"]) for item in accepted)
    assert sorted(tuple(pair) for pair in pairs) == [("band", "Incubus"), ("band", "Korn"), ("band", "Soundgarden")]
    assert await redis.xlen(keys.STREAM) == 0
    assert (await redis.xpending(keys.STREAM, keys.GROUP))["pending"] == 0

    await redis.flushdb()  # the cache is gone: GET must be served by Postgres
    for item in accepted:
        response = await client.get(f"{BASE}/{item['id']}")
        assert response.status_code == 200
        assert response.json() == item


async def test_stored_notifications_cache_keys_expire(client: httpx.AsyncClient, redis: Redis, drain: Drain) -> None:
    created = (await client.post(f"{BASE}/", json={"to": "me"})).json()

    await drain_all(drain)

    ttl = await redis.ttl(keys.cache_key(created["service_id"], created["id"]))
    assert 0 < ttl <= drain.settings.cache_ttl_seconds


async def test_redelivered_batch_makes_no_duplicates(
    client: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, drain: Drain
) -> None:
    await client.post(f"{BASE}/multiple", json=[{"to": f"r{i}", "personalization": {"i": str(i)}} for i in range(50)])
    batch = await drain.read_new()
    await drain._store(await _entries(drain, batch), redelivered=False)  # stored; the worker "dies" before acking

    rescuer = Drain(redis, engine, drain.settings.model_copy(update={"reclaim_idle_ms": 0}), "rescuer")
    reclaimed = await rescuer.reclaim_stale()
    assert [entry_id for entry_id, _ in reclaimed] == [entry_id for entry_id, _ in batch]
    assert await rescuer.drain_batch(reclaimed, redelivered=True) == 0  # nothing new: all 50 were stored already
    assert await drain.drain_batch(batch) == 0  # the COPY fast path meets the duplicates and falls back

    assert await count_rows(engine) == 50
    async with engine.connect() as conn:
        pairs = await conn.scalar(text("SELECT count(*) FROM notifications, jsonb_each(personalization)"))
    assert pairs == 50
    assert await redis.xlen(keys.STREAM) == 0


async def test_poison_entry_is_dead_lettered_and_the_rest_stored(
    client: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, drain: Drain
) -> None:
    good = (await client.post(f"{BASE}/multiple", json=[{"to": "a"}, {"to": "b"}])).json()
    await redis.xadd(keys.STREAM, {keys.STREAM_FIELD: b"{not json"})
    bad_date = orjson.dumps([{**good[0], "id": good[0]["id"][:-6] + "0000ff", "created_at": "not a date"}])
    await redis.xadd(keys.STREAM, {keys.STREAM_FIELD: bad_date})
    later = (await client.post(f"{BASE}/", json={"to": "c"})).json()

    assert await drain_all(drain) == 3

    assert await count_rows(engine) == 3
    async with engine.connect() as conn:
        stored = set((await conn.execute(text("SELECT id::text FROM notifications"))).scalars())
    assert stored == {good[0]["id"], good[1]["id"], later["id"]}
    dead = await redis.xrange(keys.DEAD_LETTER_STREAM)
    assert [fields[b"payload"] for _, fields in dead] == [b"{not json", bad_date]
    assert all(fields[b"error"] for _, fields in dead)
    assert await redis.xlen(keys.STREAM) == 0


async def test_an_entry_whose_json_is_gone_is_dead_lettered_unless_it_was_stored_before(
    client: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, drain: Drain
) -> None:
    kept = (await client.post(f"{BASE}/", json={"to": "kept"})).json()
    lost = (await client.post(f"{BASE}/", json={"to": "lost"})).json()
    lost_key = keys.cache_key(lost["service_id"], lost["id"])
    await redis.delete(lost_key)  # as if deleted by hand, or evicted by a Redis that is not noeviction

    assert await drain_all(drain) == 1

    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT id::text FROM notifications"))).scalars().all() == [kept["id"]]
    dead = await redis.xrange(keys.DEAD_LETTER_STREAM)
    assert len(dead) == 1
    assert lost_key.encode() in dead[0][1][b"error"]
    assert await redis.xlen(keys.STREAM) == 0

    # A redelivered entry whose key has expired was stored before its TTL was set: acked, not dead-lettered.
    await redis.xadd(keys.STREAM, {keys.STREAM_KEY_FIELD: lost_key})
    assert await drain.drain_batch(await drain.read_new(), redelivered=True) == 0
    assert await redis.xlen(keys.DEAD_LETTER_STREAM) == 1
    assert await redis.xlen(keys.STREAM) == 0


async def test_group_lost_with_redis_is_recreated(client: httpx.AsyncClient, redis: Redis, drain: Drain) -> None:
    await redis.flushdb()  # as after a Redis restart without persistence: no stream, no group
    await client.post(f"{BASE}/", json={"to": "after the flush"})

    await drain.ensure_group()

    assert await drain_all(drain) == 1


async def _entries(drain: Drain, batch: list) -> list:
    from worker.entries import Entry

    entries = []
    for entry_id, fields in batch:
        cache_key = fields[keys.STREAM_KEY_FIELD].decode()
        payload = await drain.redis.get(cache_key)
        entries.append(Entry(entry_id, payload, orjson.loads(payload), cache_key))
    return entries


async def test_drain_loop_survives_redis_refusals_and_goes_on(
    client: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, drain: Drain, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.exceptions import ResponseError

    await redis.flushdb()  # no group: the loop must create it after the NOGROUP answer
    await client.post(f"{BASE}/", json={"to": "waiting out the refusals"})
    real_read = drain.read_new
    failures = iter(
        [ResponseError("MISCONF Errors writing to the AOF file"), ResponseError("OOM command not allowed"), None]
    )

    async def flaky_read() -> list:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        if await count_rows(engine) == 1:
            drain.stopping.set()
        return await real_read()

    monkeypatch.setattr(drain, "read_new", flaky_read)
    await asyncio.wait_for(drain.run(), 30)

    assert await count_rows(engine) == 1


async def test_after_a_part_full_batch_the_drain_lingers_but_stops_at_once(
    client: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, drain: Drain
) -> None:
    lingering = Drain(redis, engine, drain.settings.model_copy(update={"drain_linger_ms": 120_000}), "lingering")
    await client.post(f"{BASE}/", json={"to": "first"})
    running = asyncio.create_task(lingering.run())

    deadline = asyncio.get_running_loop().time() + 60  # however long a busy machine takes to store the first
    while asyncio.get_running_loop().time() < deadline:
        if await count_rows(engine) == 1:
            break
        await asyncio.sleep(0.05)
    assert await count_rows(engine) == 1

    await client.post(f"{BASE}/", json={"to": "second"})
    await asyncio.sleep(0.5)
    assert await count_rows(engine) == 1  # the batch of one was not full: the second waits out the linger

    lingering.stopping.set()
    await asyncio.wait_for(running, 30)  # the linger ends at once on stop, not after 120 s
    assert await drain_all(drain) == 1


async def test_a_large_batch_is_stored_in_parts_of_at_most_drain_batch_bytes(
    client: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, drain: Drain
) -> None:
    for request in range(6):
        items = [{"to": f"r{request}-{i}", "personalization": {"i": str(i)}} for i in range(10)]
        assert (await client.post(f"{BASE}/multiple", json=items)).status_code == 201
    cache_keys = [fields[keys.STREAM_KEY_FIELD] for _, fields in await redis.xrange(keys.STREAM)]
    sizes = [len(payload) for payload in await redis.mget(cache_keys)]
    limit = 2 * max(sizes)  # two requests per part
    parted = Drain(redis, engine, drain.settings.model_copy(update={"drain_batch_bytes": limit}), "parted")

    batch = await parted.read_new()
    assert len(batch) == 6
    assert await parted.drain_batch(batch) == 60

    async with engine.connect() as conn:
        transactions = (await conn.execute(text("SELECT count(DISTINCT xmin::text) FROM notifications"))).scalar_one()
    assert transactions == 3
    assert await redis.xlen(keys.STREAM) == 0
    assert (await redis.xpending(keys.STREAM, keys.GROUP))["pending"] == 0


@pytest.mark.parametrize("declared", [True, False], ids=["sizes-declared", "entries-of-an-older-api"])
async def test_a_batch_is_fetched_part_by_part_each_once_the_one_before_is_stored(
    client: httpx.AsyncClient,
    redis: Redis,
    engine: AsyncEngine,
    drain: Drain,
    monkeypatch: pytest.MonkeyPatch,
    declared: bool,
) -> None:
    for request in range(6):
        items = [{"to": f"r{request}-{i}", "personalization": {"i": str(i)}} for i in range(10)]
        assert (await client.post(f"{BASE}/multiple", json=items)).status_code == 201
    written = await redis.xrange(keys.STREAM)
    sizes = [len(payload) for payload in await redis.mget([fields[keys.STREAM_KEY_FIELD] for _, fields in written])]
    assert [int(fields[keys.STREAM_SIZE_FIELD]) for _, fields in written] == sizes
    if not declared:  # as an older API wrote them: the drain has to ask Redis for the sizes
        await redis.delete(keys.STREAM)
        for _, fields in written:
            await redis.xadd(
                keys.STREAM, {name: value for name, value in fields.items() if name != keys.STREAM_SIZE_FIELD}
            )
        await drain.ensure_group()
    limit = 2 * max(sizes)  # two requests per part
    parted = Drain(redis, engine, drain.settings.model_copy(update={"drain_batch_bytes": limit}), "parted")
    fetches: list[tuple[int, int]] = []  # per MGET: rows stored before it, bytes it fetched
    mget = redis.mget

    async def counting_mget(names: list[str]) -> list[bytes | None]:
        stored_before = await count_rows(engine)
        payloads = await mget(names)
        fetches.append((stored_before, sum(len(payload or b"") for payload in payloads)))
        return payloads

    monkeypatch.setattr(redis, "mget", counting_mget)
    batch = await parted.read_new()
    assert len(batch) == 6
    assert await parted.drain_batch(batch) == 60

    assert [stored_before for stored_before, _ in fetches] == [0, 20, 40]  # fetched after the part before it
    assert all(fetched <= limit for _, fetched in fetches)
    assert await count_rows(engine) == 60
    assert await redis.xlen(keys.STREAM) == 0
    assert (await redis.xpending(keys.STREAM, keys.GROUP))["pending"] == 0


async def test_only_idle_consumers_with_nothing_pending_are_forgotten(
    client: httpx.AsyncClient, redis: Redis, drain: Drain
) -> None:
    await client.post(f"{BASE}/", json={"to": "held"})
    await redis.xreadgroup(keys.GROUP, "holder", {keys.STREAM: ">"}, count=1)  # pending at holder, never acked
    await redis.xgroup_createconsumer(keys.STREAM, keys.GROUP, "gone")
    await asyncio.sleep(0.05)
    before = {consumer["name"] for consumer in await redis.xinfo_consumers(keys.STREAM, keys.GROUP)}
    assert {b"holder", b"gone"} <= before

    assert await forget_idle_consumers({"drains": [drain]}, idle_ms=10) == len(before) - 1  # all but "holder"

    names = {consumer["name"] for consumer in await redis.xinfo_consumers(keys.STREAM, keys.GROUP)}
    assert names == {b"holder"}
    assert (await redis.xpending(keys.STREAM, keys.GROUP))["pending"] == 1


async def test_an_entry_delivered_too_often_is_dead_lettered_not_handed_on(
    client: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, drain: Drain
) -> None:
    created = (await client.post(f"{BASE}/", json={"to": "deadly"})).json()
    await redis.xreadgroup(keys.GROUP, "victim", {keys.STREAM: ">"}, count=1)  # a worker that died with it
    rescuer = Drain(
        redis, engine, drain.settings.model_copy(update={"reclaim_idle_ms": 0, "max_deliveries": 2}), "rescuer"
    )

    second = await rescuer.reclaim_stale()  # its second delivery: still handed on
    assert await rescuer.bury_overdelivered(second) == second
    third = await rescuer.reclaim_stale()  # the third: past MAX_DELIVERIES
    assert await rescuer.bury_overdelivered(third) == []

    (letter,) = await redis.xrange(keys.DEAD_LETTER_STREAM)
    assert b"delivered 3 times (MAX_DELIVERIES=2)" in letter[1][b"error"]
    assert orjson.loads(letter[1][b"payload"])[0]["id"] == created["id"]
    assert await redis.xlen(keys.STREAM) == 0
    assert (await redis.xpending(keys.STREAM, keys.GROUP))["pending"] == 0
    assert (await client.get(f"{BASE}/{created['id']}")).json() == created  # still found in Redis
    assert await count_rows(engine) == 0


async def test_notify_type_reference_and_status_are_stored_by_copy_and_by_the_idempotent_insert(
    engine: AsyncEngine,
) -> None:
    now = datetime.now(UTC).isoformat()
    service = str(new_id())
    _, ids = request_ids(4)  # in id order
    copied = [
        encode_notification(ids[0], service, "ann@example.com", {}, now, notification_type="email", reference="a1"),
        encode_notification(ids[1], service, "07700900123", {}, now, notification_type="sms"),
        encode_notification(ids[2], service, "somebody", {}, now),  # a native route's: no type
    ]
    inserted = encode_notification(ids[3], service, "bob@example.com", {}, now, notification_type="email")
    docs = [orjson.loads(doc) for doc in copied]
    await partitions.ensure(engine, {partitions.day_of(doc["id"]) for doc in docs}, set())

    async with engine.connect() as conn:
        await queries.copy_notifications((await conn.get_raw_connection()).driver_connection, docs)
    async with engine.begin() as conn:
        assert await queries.insert_notifications(conn, [join_array([inserted]).decode()]) == 1

    async with engine.connect() as conn:
        rows = (await conn.execute(text('SELECT "to", type, reference, status FROM notifications ORDER BY id'))).all()
        stored = [await queries.fetch_notification(conn, UUID(doc["id"]), UUID(service)) for doc in docs]
    assert [tuple(row) for row in rows] == [
        ("ann@example.com", "email", "a1", "created"),
        ("07700900123", "sms", None, "created"),
        ("somebody", None, None, "created"),
        ("bob@example.com", "email", None, "created"),
    ]
    assert stored == copied  # the same document from Postgres as from Redis, the native one without the new fields
    assert b'"type"' not in copied[2]


async def test_more_entries_than_lua_can_unpack_are_acked_and_deleted(redis: Redis, drain: Drain) -> None:
    ids = []
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(9_000):  # Lua's unpack stops near 8,000 values
            pipe.xadd(drain.stream, {keys.STREAM_FIELD: b"[]", keys.REQUEST_ID_FIELD: str(n)})
        ids = await pipe.execute()
    await redis.xreadgroup(keys.GROUP, drain.consumer, {drain.stream: ">"}, count=10_000)

    await drain._ack_and_delete_all(ids)

    assert await redis.xlen(drain.stream) == 0
    assert (await redis.xpending(drain.stream, keys.GROUP))["pending"] == 0


async def test_entries_whose_read_reply_was_lost_are_read_again_at_once(
    client: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, drain: Drain
) -> None:
    accepted: list[str] = []
    for batch in range(5):
        response = await client.post(f"{BASE}/multiple", json=[{"to": f"{batch}-{i}"} for i in range(10)])
        accepted.extend(item["id"] for item in response.json())

    async with lossy_proxy(drain.settings.redis_url or "") as proxy:
        # reclaiming (XAUTOCLAIM after RECLAIM_IDLE_MS) is out of reach: only a re-read of its own entries stores them
        settings = drain.settings.model_copy(
            update={"redis_url": proxy.url, "reclaim_idle_ms": 600_000, "redis_timeout_seconds": 0.3}
        )
        impatient = redis_client.connect(settings)
        stalled = Drain(impatient, engine, settings, "stalled", observes_backlog=False)
        proxy.lose_reply_to = b"XREADGROUP"  # it runs (the entries are delivered), its reply times out
        running = asyncio.create_task(stalled.run())
        try:
            for _ in range(300):  # 30 s at most, far below RECLAIM_IDLE_MS
                if await count_rows(engine) == len(accepted):
                    break
                await asyncio.sleep(0.1)
        finally:
            stalled.stopping.set()
            await asyncio.wait_for(running, 30)
            await impatient.aclose()

    assert proxy.lost == 1
    async with engine.connect() as conn:
        stored = sorted((await conn.execute(text("SELECT id::text FROM notifications"))).scalars())
    assert stored == sorted(accepted)
    assert stalled.stored == len(accepted)  # each stored once
    assert await redis.xlen(keys.STREAM) == 0
    assert (await redis.xpending(keys.STREAM, keys.GROUP))["pending"] == 0


async def test_overdelivered_entries_are_found_whatever_their_ids_sort_as_bytes(
    client: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, drain: Drain
) -> None:
    await client.post(f"{BASE}/", json={"to": "deadly"})
    ((_, fields),) = await redis.xrange(keys.STREAM)
    await redis.delete(keys.STREAM)
    for entry_id in ("5-2", "5-10"):  # as bytes 5-10 < 5-2: a byte-wise range would run backwards
        await redis.xadd(keys.STREAM, fields, id=entry_id)
    await redis.xgroup_create(keys.STREAM, keys.GROUP, id="0")
    await redis.xreadgroup(keys.GROUP, "victim", {keys.STREAM: ">"}, count=2)  # a worker that died with them
    rescuer = Drain(
        redis, engine, drain.settings.model_copy(update={"reclaim_idle_ms": 0, "max_deliveries": 1}), "rescuer"
    )

    claimed = await rescuer.reclaim_stale()  # their second delivery: past MAX_DELIVERIES=1

    assert sorted(entry_id for entry_id, _ in claimed) == [b"5-10", b"5-2"]
    assert await rescuer.bury_overdelivered(claimed) == []
    assert await redis.xlen(keys.DEAD_LETTER_STREAM) == 2


async def test_each_stored_batch_counts_as_progress_for_the_heartbeat(
    client: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, drain: Drain
) -> None:
    await client.post(f"{BASE}/", json={"to": "me"})
    beats: list[float] = []
    beating = Drain(redis, engine, drain.settings, "beating", on_loop=lambda: beats.append(1.0))
    await beating.ensure_group()

    await beating.drain_batch(await beating.read_new())  # as the reclaim loop drains batch after batch, no read between

    assert beats == [1.0]


async def test_a_drain_retrying_through_a_postgres_outage_keeps_its_heartbeat_and_its_batch(
    client: httpx.AsyncClient, redis: Redis, drain: Drain
) -> None:
    await client.post(f"{BASE}/", json={"to": "me"})
    gone = create_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")  # nothing listens there
    beaten = asyncio.Event()
    beats: list[float] = []

    def beat() -> None:
        beats.append(1.0)
        if len(beats) >= 3:
            beaten.set()

    settings = drain.settings.model_copy(update={"db_retry_max_seconds": 0.05})
    waiting = Drain(redis, gone, settings, "waiting", on_loop=beat)
    await waiting.ensure_group()
    storing = asyncio.create_task(waiting.drain_batch(await waiting.read_new()))
    try:
        # a liveness probe sees it alive: no restart, no delivery counted towards MAX_DELIVERIES for nothing
        await asyncio.wait_for(beaten.wait(), 60)
    finally:
        waiting.stopping.set()
        storing.cancel()
        with contextlib.suppress(BaseException):
            await storing
        await gone.dispose()
    pending = await redis.xpending(keys.STREAM, keys.GROUP)
    assert pending["pending"] == 1  # the batch is kept for the next try, never dropped or dead-lettered
    assert await redis.xlen(keys.DEAD_LETTER_STREAM) == 0
