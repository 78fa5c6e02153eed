"""Backpressure, readiness and dead letters, on the suite's shared servers."""

from datetime import UTC, datetime

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api import writer
from api.main import create_app
from shared import deadletters, keys, tenancy
from shared.codec import encode_notification, join_array
from shared.settings import Settings
from tests.helpers import Tenant, count_rows, drain_all, queued
from worker.drain import Drain

BASE = "/notifications/v1"


async def test_full_backlog_refuses_writes_until_drained(
    settings: Settings, tenant: Tenant, redis: Redis, drain: Drain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "BACKLOG_RECHECK_SECONDS", 0.0)
    app = create_app(settings.model_copy(update={"max_backlog_entries": 3}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=tenant.headers) as client:
            accepted = [(await client.post(f"{BASE}/", json={"to": str(i)})).json() for i in range(3)]

            refused = await client.post(f"{BASE}/", json={"to": "one too many"})
            assert refused.status_code == 503
            assert refused.headers["retry-after"].isdigit()
            assert "retry later" in refused.json()["detail"]
            assert (await client.get(f"{BASE}/{accepted[0]['id']}")).status_code == 200
            assert (await client.get("/status/ready")).json()["accepting"] is False

            await drain_all(drain)

            assert (await client.post(f"{BASE}/", json={"to": "again"})).status_code == 201
    assert await queued(redis, settings) == 1


async def test_ready_reports_backlog_and_oldest_age(client: httpx.AsyncClient) -> None:
    await client.post(f"{BASE}/", json={"to": "waiting"})

    response = await client.get("/status/ready")

    assert response.status_code == 200
    report = response.json()
    assert report["redis"] == report["postgres"] == "ok"
    assert report["backlog_entries"] == 1
    assert 0 <= report["oldest_pending_age_seconds"] < 60
    assert report["dead_letters"] == 0
    assert report["accepting"] is True


async def test_dead_letter_replayed_after_the_cause_is_fixed(
    tenant: Tenant, redis: Redis, engine: AsyncEngine, drain: Drain
) -> None:
    # a rule added to the table by hand refuses the row (the table itself has no foreign keys to break)
    async with engine.begin() as conn:
        await conn.execute(
            text("""ALTER TABLE notifications ADD CONSTRAINT no_lost_souls CHECK ("to" <> 'lost soul')""")
        )
    try:
        doc = encode_notification(tenancy.new_id(), tenant.service_id, "lost soul", {}, datetime.now(UTC))
        await redis.xadd(drain.stream, {keys.STREAM_FIELD: join_array([doc])})

        await drain_all(drain)

        letters = await deadletters.list_dead_letters(redis, layout=keys.layout_for(drain.settings))
        assert len(letters) == 1
        assert "no_lost_souls" in letters[0].error
        assert orjson.loads(letters[0].payload)[0]["to"] == "lost soul"
        assert await count_rows(engine) == 0
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE notifications DROP CONSTRAINT no_lost_souls"))

    assert await deadletters.replay(redis, layout=keys.layout_for(drain.settings)) == 1
    await drain_all(drain)

    assert await count_rows(engine) == 1
    assert await deadletters.list_dead_letters(redis, layout=keys.layout_for(drain.settings)) == []
