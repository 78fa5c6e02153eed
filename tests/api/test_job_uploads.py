"""Bounds on job uploads: MAX_CONCURRENT_JOBS per API process, and a job past the whole rate limit refused early."""

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import ratelimits
from tests.helpers import Tenant

JOBS = "/notifications/v1/jobs"


async def test_one_job_past_max_concurrent_jobs_is_a_503_and_the_next_one_after_is_stored(
    client: httpx.AsyncClient, app: FastAPI, engine: AsyncEngine, tenant: Tenant
) -> None:
    app.state.settings = app.state.settings.model_copy(update={"max_concurrent_jobs": 1})
    template = await client.post("/templates/v1/", json={"name": "t", "type": "sms", "body": "Code ((code))"})
    params = {"template_id": template.json()["id"]}
    go_on = asyncio.Event()
    reading = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"to,code\n+447700900123,1\n"
        reading.set()
        await go_on.wait()
        yield b"+447700900124,2\n"

    csv = {"Content-Type": "text/csv"}
    first = asyncio.create_task(client.post(JOBS, params=params, headers=csv, content=slow_body()))
    await asyncio.wait_for(reading.wait(), 30)  # the first job is being stored: its transaction is open
    refused = await client.post(JOBS, params=params, headers=csv, content=b"to,code\n+447700900125,3\n")
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"]
    assert "MAX_CONCURRENT_JOBS" in refused.json()["detail"]
    go_on.set()
    stored = await asyncio.wait_for(first, 30)
    assert stored.status_code == 201, stored.text
    assert stored.json()["rows"] == 2
    after = await client.post(JOBS, params=params, headers=csv, content=b"to,code\n+447700900125,3\n")
    assert after.status_code == 201, after.text
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM notifications"))).scalar_one() == 3


async def test_a_job_past_the_whole_rate_limit_is_refused_before_its_end(
    client: httpx.AsyncClient, engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    await ratelimits.set_rate_limit(engine, redis, tenant.service_id, 10)
    template = await client.post("/templates/v1/", json={"name": "t", "type": "sms", "body": "Code ((code))"})

    async def endless_body() -> AsyncIterator[bytes]:
        yield b"to,code\n" + b"+447700900123,1\n" * 6000  # more than one batch of rows, past the limit
        await asyncio.Event().wait()  # and then the client never ends its upload

    refused = await asyncio.wait_for(
        client.post(
            JOBS,
            params={"template_id": template.json()["id"]},
            headers={"Content-Type": "text/csv"},
            content=endless_body(),
        ),
        60,
    )
    assert refused.status_code == 413, refused.text
    assert "whole rate limit of 10" in refused.json()["detail"]
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM notifications"))).scalar_one() == 0


async def test_a_commit_postgres_does_not_confirm_is_answered_as_an_unknown_outcome_not_as_nothing_stored(
    client: httpx.AsyncClient, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = await client.post("/templates/v1/", json={"name": "t", "type": "sms", "body": "Code ((code))"})
    commit = asyncpg.transaction.Transaction.commit

    async def committed_then_lost(self: asyncpg.transaction.Transaction) -> None:
        await commit(self)  # applied, and then the connection is gone before the client hears of it
        raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    monkeypatch.setattr(asyncpg.transaction.Transaction, "commit", committed_then_lost)
    answered = await client.post(
        JOBS,
        params={"template_id": template.json()["id"]},
        headers={"Content-Type": "text/csv"},
        content=b"to,code\n+447700900123,1\n+447700900124,2\n",
    )
    monkeypatch.undo()

    assert answered.status_code == 503, answered.text
    detail = answered.json()["detail"]
    assert "may or may not be stored" in detail
    assert "nothing of this job was stored" not in detail
    async with engine.connect() as conn:
        job_id = (await conn.execute(text("SELECT id FROM jobs"))).scalar_one()  # it was stored
    assert str(job_id) in detail
    found = await client.get(f"{JOBS}/{job_id}")
    assert found.status_code == 200, found.text


async def test_a_name_with_a_control_character_is_a_422_before_the_body_is_read(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    template = await client.post("/templates/v1/", json={"name": "t", "type": "sms", "body": "Code ((code))"})
    for name in ("a\x00b", "a\x01b"):
        refused = await client.post(
            JOBS,
            params={"template_id": template.json()["id"], "name": name},
            headers={"Content-Type": "text/csv"},
            content=b"to,code\n+447700900123,1\n",
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["loc"] == ["query", "name"]
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM jobs"))).scalar_one() == 0
