"""Fixtures: real PostgreSQL and Redis servers (embedded ones unless TEST_DATABASE_URL / TEST_REDIS_URL are set).

Every test starts from an empty database and an empty Redis (truncate + flush), and talks to the app through
its ASGI interface with the lifespan running, so the same connections a server would open are used.
"""

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.main import create_app
from devstack.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from devstack.embedded_cluster import EmbeddedRedisCluster
from shared import redis_client
from shared.db import create_engine
from shared.settings import Settings
from tests.helpers import (
    CLOCK_AHEAD_DAYS,
    CLUSTER_SHARDS,
    ON_CLUSTER,
    ROOT,
    TEST_SECRET_KEY,
    Servers,
    Tenant,
    make_tenant,
    migrate,
    notify_headers,
    notify_key,
)
from worker.drain import Drain


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """Another process's server, as far as a port is concerned: a socket listening on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Start (or reuse) the servers for the whole session and migrate the database.

    Embedded servers take free ports, picked again if another process (a parallel `make test`) takes one first.
    """
    started: list[EmbeddedPostgres | EmbeddedRedis | EmbeddedRedisCluster] = []
    database_url = os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    try:
        if not database_url:
            pg = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data").start()
            started.append(pg)
            database_url = pg.url
        if not redis_url:
            redis = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
            started.append(redis)
            redis_url = redis.url
        cluster_url = ""
        if ON_CLUSTER:
            cluster = EmbeddedRedisCluster(tmp_path_factory.mktemp("cluster")).start()
            started.append(cluster)
            cluster_url = cluster.url
        migrate(database_url)
        yield Servers(database_url, redis_url, cluster_url)
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture(scope="session")
def settings(servers: Servers) -> Settings:
    """Settings pointing at the test servers; the drain blocks briefly so tests do not wait on it."""
    return Settings(
        database_url=servers.database_url,
        redis_url=servers.cluster_url or servers.redis_url,
        redis_cluster=ON_CLUSTER,
        stream_shards=CLUSTER_SHARDS if ON_CLUSTER else 1,
        drain_block_ms=20,
        admin_token="test-admin-token",
        secret_key=TEST_SECRET_KEY,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture(scope="session")
def worker_env(servers: Servers) -> dict[str, str]:
    """Environment for worker/API subprocesses started by tests."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DATABASE_URL=servers.database_url,
        REDIS_URL=servers.redis_url,
        RECLAIM_IDLE_MS="500",
        RECLAIM_INTERVAL_SECONDS="1",
        WORKER_METRICS_PORT="0",
        SECRET_KEY=TEST_SECRET_KEY,
        PYTHONPATH=str(ROOT),
    )
    return env


@pytest.fixture(scope="session")
def clock_ahead() -> dict[str, str]:
    """Environment that runs a process with its clock CLOCK_AHEAD_DAYS days ahead (Debian's libfaketime).

    libfaketime, preloaded, moves every clock the process reads (time, datetime, the event loop's); the process
    stays the one started (its signals and exit code are its own). `make test-tools` installs it; the environment
    is checked to move the clock, so no test passes on an unmoved one.
    """
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1")) + sorted(
        Path("/usr/lib/faketime").glob("libfaketime.so.1")
    )
    if not found:
        pytest.fail("libfaketime is not installed: `make test-tools` installs it (Debian's faketime package)")
    env = {"LD_PRELOAD": str(found[0]), "FAKETIME": f"+{CLOCK_AHEAD_DAYS}d"}
    shown = subprocess.run(
        [sys.executable, "-c", "import time; print(time.time())"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    ahead = float(shown.stdout) - time.time()
    assert ahead > (CLOCK_AHEAD_DAYS - 0.5) * 86_400, f"libfaketime did not move the clock: {shown}"
    return env


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """The folder of this interpreter's console scripts (arq, uvicorn)."""
    return Path(sys.executable).parent


@pytest_asyncio.fixture(loop_scope="session")
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    """A Redis client (a cluster client with TEST_REDIS_CLUSTER=1) on an emptied database."""
    client = redis_client.connect(settings)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def engine(servers: Servers) -> AsyncIterator[AsyncEngine]:
    """A database engine on emptied tables."""
    engine = create_engine(servers.database_url)
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE notifications, services CASCADE"))
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def app(settings: Settings, redis: Redis, engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    """The application with its lifespan running, on clean servers."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest_asyncio.fixture(loop_scope="session")
async def tenant(engine: AsyncEngine, redis: Redis) -> Tenant:
    """The service the default `client` acts for."""
    return await make_tenant(engine, redis, "tenant-a")


@pytest_asyncio.fixture(loop_scope="session")
async def anonymous(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in-process, without credentials."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost:8000") as http:
        yield http


@pytest_asyncio.fixture(loop_scope="session")
async def client(app: FastAPI, tenant: Tenant) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in-process with the API key of `tenant`."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost:8000", headers=tenant.headers) as http:
        yield http


@pytest_asyncio.fixture(loop_scope="session")
async def drain(redis: Redis, engine: AsyncEngine, settings: Settings) -> Drain:
    """An in-process drain (the same class the worker runs) with its consumer group created."""
    instance = Drain(redis, engine, settings, "test-consumer")
    await instance.ensure_group()
    return instance


@pytest.fixture
def live_api(settings: Settings, redis: Redis, engine: AsyncEngine) -> Iterator[str]:
    """The app served over real HTTP by uvicorn (in a thread of its own) on a free port: its base URL.

    For clients that speak HTTP themselves, such as the official Notify client (`requests`).
    """
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="live-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live API did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def own_servers(tmp_path: Path) -> Iterator[tuple[EmbeddedPostgres, EmbeddedRedis]]:
    """A PostgreSQL and a Redis just for this test (one that stops Postgres)."""
    pg = EmbeddedPostgres(tmp_path / "pg").start()
    redis_server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        migrate(pg.url)
        yield pg, redis_server
    finally:
        redis_server.stop(kill=True)
        pg.stop(mode="immediate")


@pytest.fixture
def notify(client: httpx.AsyncClient, tenant: Tenant) -> httpx.AsyncClient:
    """The in-process client, speaking for `tenant` with a GOV.UK Notify token."""
    client.headers.update(notify_headers(notify_key(tenant)))
    return client
