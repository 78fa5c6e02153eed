"""Faults against servers of the test's own (spare ports), so they can be stopped, killed and restarted.

What a user sees (status codes) and what Postgres holds at the end: every accepted notification, exactly once.
"""

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.main import create_app
from devstack.embedded import EmbeddedPostgres, EmbeddedRedis
from shared.db import create_engine
from shared.settings import Settings
from tests.helpers import Tenant, Workers, make_tenant, migrate, stop, wait_for

BASE = "/notifications/v1"


@dataclass
class Own:
    """Servers owned by one test, with clients and the app on them."""

    pg: EmbeddedPostgres
    redis_server: EmbeddedRedis
    settings: Settings
    env: dict[str, str]


@pytest.fixture
def own(tmp_path: Path, worker_env: dict[str, str]) -> Iterator[Own]:
    """A PostgreSQL and a Redis (AOF always) just for this test."""
    pg = EmbeddedPostgres(tmp_path / "pg").start()
    redis_server = EmbeddedRedis(tmp_path / "redis", appendfsync="always").start()
    try:
        migrate(pg.url)
        settings = Settings(
            database_url=pg.url,
            redis_url=redis_server.url,
            redis_timeout_seconds=1.0,
            drain_block_ms=20,
            db_retry_max_seconds=0.5,
            _env_file=None,  # type: ignore[call-arg]
        )
        env = {**worker_env, "DATABASE_URL": pg.url, "REDIS_URL": redis_server.url, "DB_RETRY_MAX_SECONDS": "0.5"}
        yield Own(pg, redis_server, settings, env)
    finally:
        redis_server.stop(kill=True)
        pg.stop(mode="immediate")


@pytest_asyncio.fixture(loop_scope="session")
async def stack(own: Own) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, Tenant, AsyncEngine]]:
    """The app on the test's own servers, a client with a valid key, and an engine for assertions."""
    engine = create_engine(own.pg.url)
    redis = Redis.from_url(own.redis_server.url)
    tenant = await make_tenant(engine, redis, "faulty")
    await redis.aclose()
    app = create_app(own.settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=tenant.headers) as client:
            yield app, client, tenant, engine
    await engine.dispose()


async def stored_ids(engine: AsyncEngine) -> list[str]:
    """Every notification id in Postgres (with repeats, were there any)."""
    async with engine.connect() as conn:
        return sorted((await conn.execute(text("SELECT id::text FROM notifications"))).scalars())


async def test_postgres_down_keeps_accepting_and_catches_up(
    own: Own, stack: tuple, tmp_path: Path, venv_bin: Path
) -> None:
    _, client, _, engine = stack
    workers = Workers(venv_bin, own.env, tmp_path)
    try:
        worker = workers.start()
        first = (await client.post(f"{BASE}/", json={"to": "before"})).json()
        await wait_for(lambda: _has(engine, 1))

        own.pg.stop(mode="immediate")
        accepted = [first["id"]]
        for i in range(20):
            response = await client.post(f"{BASE}/", json={"to": f"during-{i}"})
            assert response.status_code == 201, response.text
            accepted.append(response.json()["id"])
            assert (await client.get(f"{BASE}/{accepted[-1]}")).status_code == 200  # served from Redis
        ready = await client.get("/status/ready")
        assert ready.status_code == 503
        assert ready.json()["postgres"].startswith("unavailable")
        assert ready.json()["redis"] == "ok"
        await asyncio.sleep(1.5)  # the worker retries meanwhile

        own.pg.start()
        await wait_for(lambda: _has(engine, len(accepted)))
        assert await stored_ids(engine) == sorted(accepted)
        assert (await client.get("/status/ready")).status_code == 200
        assert await stop(worker) == 0
    finally:
        workers.stop_all()


async def _has(engine: AsyncEngine, count: int) -> bool:
    try:
        return len(await stored_ids(engine)) >= count
    except Exception:
        return False


async def test_redis_down_is_503_and_recovers(own: Own, stack: tuple) -> None:
    _, client, _, _ = stack
    before = await client.post(f"{BASE}/", json={"to": "before"})
    assert before.status_code == 201

    own.redis_server.stop(kill=True)
    for method, path, body in (("POST", f"{BASE}/", {"to": "x"}), ("GET", f"{BASE}/{before.json()['id']}", None)):
        started = time.monotonic()
        response = await client.request(method, path, json=body)
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit()
        assert time.monotonic() - started < 5
    assert (await client.get("/status/ready")).status_code == 503
    assert (await client.get("/status/heartbeat")).status_code == 204

    own.redis_server.start()  # same folder: the AOF brings back what was acknowledged
    deadline = time.monotonic() + 60  # the restarted Redis loads its AOF first: as long as a busy machine takes
    while True:  # the API finds Redis answering again by itself (a PING every half second)
        after = await client.post(f"{BASE}/", json={"to": "after"})
        if after.status_code != 503 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert after.status_code == 201
    assert (await client.get(f"{BASE}/{before.json()['id']}")).json() == before.json()


async def test_redis_crash_loses_no_acknowledged_notification(
    own: Own, stack: tuple, tmp_path: Path, venv_bin: Path
) -> None:
    _, client, _, engine = stack
    accepted = []
    for i in range(10):
        response = await client.post(f"{BASE}/multiple", json=[{"to": f"{i}-{j}"} for j in range(10)])
        accepted.extend(item["id"] for item in response.json())

    own.redis_server.stop(kill=True)  # SIGKILL: no shutdown, only what the AOF fsynced survives
    own.redis_server.start()
    workers = Workers(venv_bin, own.env, tmp_path)
    try:
        worker = workers.start()
        await wait_for(lambda: _has(engine, len(accepted)))
        assert await stored_ids(engine) == sorted(accepted)
        assert await stop(worker, signal.SIGTERM) == 0
    finally:
        workers.stop_all()


async def test_ready_with_postgres_optional_stays_200_while_postgres_is_down(own: Own, stack: tuple) -> None:
    _, client, _, _ = stack

    own.pg.stop(mode="immediate")

    assert (await client.get("/status/ready")).status_code == 503
    optional = await client.get("/status/ready", params={"postgres": "optional"})
    assert optional.status_code == 200
    assert optional.json()["postgres"].startswith("unavailable")
