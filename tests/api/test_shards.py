"""STREAM_SHARDS: the queue as several streams with hash-tagged keys, on the test's plain Redis."""

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from api.main import create_app
from shared import keys, ratelimits
from shared.backlog import read_backlog
from shared.ids import new_stem, stem_and_index
from shared.schemas import BRIEF_EXAMPLE
from shared.settings import Settings
from tests.helpers import Tenant, count_rows
from worker.drain import Drain

BASE = "/notifications/v1"
SHARDS = 3
LAYOUT = keys.layout(SHARDS)


@pytest.fixture
async def sharded(settings: Settings, app: FastAPI, tenant: Tenant) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an API process with STREAM_SHARDS=3 (on clean servers: `app` cleaned them)."""
    sharded_app = create_app(settings.model_copy(update={"stream_shards": SHARDS}))
    async with sharded_app.router.lifespan_context(sharded_app):
        transport = httpx.ASGITransport(app=sharded_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=tenant.headers) as http:
            yield http


def _drains(redis: Redis, engine: AsyncEngine, settings: Settings) -> list[Drain]:
    sharded = settings.model_copy(update={"stream_shards": SHARDS})
    return [Drain(redis, engine, sharded, "test-consumer", shard) for shard in LAYOUT.shards]


def test_a_forced_stem_names_its_shard_and_tags_fall_in_distinct_slot_ranges() -> None:
    for shard in range(SHARDS):
        for _ in range(50):
            assert LAYOUT.shard_of_stem(new_stem(shard, SHARDS)).index == shard
    tags = [shard.tag for shard in LAYOUT.shards]
    assert len(set(tags)) == SHARDS
    assert all(shard.stream.startswith(f"notify:{{{shard.tag}}}:") for shard in LAYOUT.shards)
    assert keys.layout(1).shards[0].stream == keys.STREAM  # one shard on a plain Redis: the names as before


async def test_requests_spread_over_the_shards_and_get_finds_each_before_and_after_the_drain(
    sharded: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, settings: Settings
) -> None:
    accepted = [(await sharded.post(f"{BASE}/", json=BRIEF_EXAMPLE)).json() for _ in range(60)]

    lengths = [await redis.xlen(shard.stream) for shard in LAYOUT.shards]
    assert sum(lengths) == 60
    assert all(length >= 5 for length in lengths)  # 60 requests over 3 shards: each gets its share
    assert await redis.xlen(keys.STREAM) == 0
    for item in accepted:  # each request's JSON is cached in the shard its id names
        stem, _ = stem_and_index(item["id"])
        assert await redis.exists(LAYOUT.shard_of_id(item["id"]).request_key(item["service_id"], stem))
    assert [(await sharded.get(f"{BASE}/{item['id']}")).json() for item in accepted] == accepted
    assert (await read_backlog(redis, LAYOUT)).entries == 60

    stored_by_shard = []
    for drain in _drains(redis, engine, settings):  # each drain reads its own shard's stream only
        await drain.ensure_group()
        stored_by_shard.append(0)
        while batch := await drain.read_new():
            stored_by_shard[-1] += await drain.drain_batch(batch)

    assert stored_by_shard == lengths
    assert await count_rows(engine) == 60
    assert sum([await redis.xlen(shard.stream) for shard in LAYOUT.shards]) == 0
    await redis.delete(*[key async for key in redis.scan_iter("notify:{*}:r:*")])  # GET must now ask Postgres
    assert [(await sharded.get(f"{BASE}/{item['id']}")).json() for item in accepted] == accepted


async def test_every_retry_with_an_idempotency_key_goes_to_the_same_shard(
    sharded: httpx.AsyncClient, redis: Redis
) -> None:
    for n in range(12):
        headers = {"Idempotency-Key": f"order-{n}"}
        first = await sharded.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=headers)
        again = await sharded.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=headers)
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
    assert sum([await redis.xlen(shard.stream) for shard in LAYOUT.shards]) == 12


async def test_a_rate_limit_counts_in_every_shard(
    sharded: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, tenant: Tenant
) -> None:
    await ratelimits.set_rate_limit(engine, redis, tenant.service_id, 4)
    answers = [await sharded.post(f"{BASE}/", json=BRIEF_EXAMPLE) for _ in range(40)]

    accepted = [answer for answer in answers if answer.status_code == 201]
    assert {answer.status_code for answer in answers} == {201, 429}
    assert 4 <= len(accepted) <= 4 * SHARDS  # each shard's bucket holds the limit: a burst may reach N times it
    assert {answer.headers["ratelimit-limit"] for answer in answers} == {"4"}
    assert len([key async for key in redis.scan_iter("notify:{*}:bucket:*")]) >= 2
