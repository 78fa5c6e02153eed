"""Fixtures: real PostgreSQL and Redis servers (embedded ones unless TEST_DATABASE_URL / TEST_REDIS_URL are set).

Every test starts from an empty database and an empty Redis (truncate + flush), and talks to the app through
its ASGI interface with the lifespan running, so the same connections a server would open are used.
"""

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI
from notifications_python_client.authentication import create_jwt_token
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.main import create_app
from devstack.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from devstack.embedded_cluster import EmbeddedRedisCluster
from shared import apikeys, keys, queries, redis_client, tenancy
from shared.db import create_engine, upgrade_database
from shared.secretbox import SecretBox, new_secret_key
from shared.settings import Settings
from worker.drain import Drain

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Servers:
    """URLs of the servers the suite runs against."""

    database_url: str
    redis_url: str
    #: A Redis Cluster's node, when the suite runs with TEST_REDIS_CLUSTER=1 (else "").
    cluster_url: str = ""


#: TEST_REDIS_CLUSTER=1: the suite's `settings`, `redis` and the app run on a local Redis Cluster of 3 primaries
#: with TEST_STREAM_SHARDS stream shards, 1 by default: the rate-limit tests count exactly, and N shards' buckets
#: admit up to N times a limit (`make test` runs the core modules so, after the whole suite on one Redis; several
#: shards on a cluster are tests/test_cluster.py's).
ON_CLUSTER = os.environ.get("TEST_REDIS_CLUSTER") == "1"
#: The stream shards of the cluster run.
CLUSTER_SHARDS = int(os.environ.get("TEST_STREAM_SHARDS", "1"))


migrate = upgrade_database


@asynccontextmanager
async def redis_asleep(redis: Redis, seconds: float) -> AsyncIterator[None]:
    """Redis busy for `seconds` (DEBUG SLEEP, as a stalled server): commands sent meanwhile run once it wakes."""
    on_every_node = {"target_nodes": RedisCluster.ALL_NODES} if redis_client.is_cluster(redis) else {}
    sleeping = asyncio.create_task(redis.execute_command("DEBUG", "SLEEP", str(seconds), **on_every_node))
    await asyncio.sleep(0.05)  # the sleep has begun
    try:
        yield
    finally:
        await sleeping


@dataclass
class LossyProxy:
    """A TCP proxy to Redis that can lose the reply to a command: the command runs, the client never hears back."""

    url: str
    #: The command (e.g. b"XREADGROUP") whose next reply is lost; cleared once it was sent.
    lose_reply_to: bytes | None = None
    #: Replies lost so far.
    lost: int = 0


@asynccontextmanager
async def lossy_proxy(redis_url: str) -> AsyncIterator[LossyProxy]:
    """A LossyProxy to the Redis at `redis_url`, its `url` the same with the proxy's address.

    A reply is lost after its command ran, as when Redis stalls between running a command and answering it (an
    fsync of `appendfsync always`) and the client times out meanwhile: the rest of that connection's replies are
    lost too (the client drops it on its timeout).
    """
    target = urlsplit(redis_url)
    proxy = LossyProxy("")

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(target.hostname, target.port)
        deaf = False

        async def commands() -> None:
            nonlocal deaf
            with contextlib.suppress(ConnectionError):
                while chunk := await client_reader.read(65536):
                    if proxy.lose_reply_to is not None and proxy.lose_reply_to in chunk.upper():
                        deaf, proxy.lose_reply_to = True, None
                        proxy.lost += 1
                    upstream_writer.write(chunk)
                    await upstream_writer.drain()
            upstream_writer.close()

        async def replies() -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await upstream_reader.read(65536):
                    if not deaf:
                        client_writer.write(chunk)
                        await client_writer.drain()
            client_writer.close()

        await asyncio.gather(commands(), replies())

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy.url = target._replace(netloc=f"127.0.0.1:{port}").geturl()
    try:
        yield proxy
    finally:
        server.close()


@asynccontextmanager
async def impatient_client(
    settings: Settings, tenant: "Tenant", seconds: float = 0.5
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app whose REDIS_TIMEOUT_SECONDS is `seconds`, `tenant`'s key already checked (and cached)."""
    app = create_app(settings.model_copy(update={"redis_timeout_seconds": seconds}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=tenant.headers) as client:
            assert (await client.post("/notifications/v1/", json={"to": "warm-up"})).status_code == 201
            yield client


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


#: The SECRET_KEY of the test settings, which `make_tenant` seals its keys' secrets with too.
TEST_SECRET_KEY = new_secret_key()


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


#: How far `clock_ahead` moves a process's clock: past RETENTION_DAYS's default (7), as in issue 19's report.
CLOCK_AHEAD_DAYS = 9


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


@dataclass
class Tenant:
    """A service and a valid API key of it."""

    service_id: UUID
    key: str
    key_id: UUID

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header of this tenant's key."""
        return {"Authorization": f"Bearer {self.key}"}


async def make_tenant(engine: AsyncEngine, redis: Redis, name: str) -> Tenant:
    """Create a service with one API key."""
    service = await tenancy.create_service(engine, name)
    created = await tenancy.create_api_key(engine, redis, SecretBox(TEST_SECRET_KEY), service.id, "test")
    return Tenant(service.id, created.secret, created.record.id)


async def insert_legacy_key(engine: AsyncEngine, redis: Redis, service_name: str) -> str:
    """Give a service (made if needed) a key of the older `nk_` shape, as an older version stored it; return it."""
    key = "nk_" + secrets.token_urlsafe(32)
    service_id = await tenancy.service_id_by_name(engine, service_name)
    if service_id is None:
        service_id = (await tenancy.create_service(engine, service_name)).id
    async with engine.begin() as conn:
        await queries.insert_api_key(
            conn, tenancy.new_id(), service_id, "legacy", key[:10], apikeys.hash_key(key), None, tenancy.utc_now()
        )
    await tenancy.load_registry(engine, redis)  # as the registry of that version held it
    return key


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


async def drain_all(drain: Drain) -> int:
    """Drain until the streams (every shard's) have nothing new; return how many notifications were stored."""
    stored = 0
    for shard in keys.layout_for(drain.settings).shards:
        each = (
            drain if shard == drain.shard else Drain(drain.redis, drain.engine, drain.settings, drain.consumer, shard)
        )
        await each.ensure_group()
        while batch := await each.read_new():
            stored += await each.drain_batch(batch)
    return stored


def _on_every_node(redis: Redis) -> dict[str, Any]:
    """On a cluster, where KEYS and INFO must go: every node (redis-py sends them to one node only otherwise)."""
    return {"target_nodes": RedisCluster.ALL_NODES} if redis_client.is_cluster(redis) else {}


async def keys_matching(redis: Redis, pattern: str) -> list[bytes]:
    """Return the keys matching `pattern`, of every node on a cluster."""
    found = await redis.keys(pattern, **_on_every_node(redis))
    if isinstance(found, dict):  # a cluster that answered node by node
        return [key for keys_ in found.values() for key in keys_]
    return list(found)


async def cache_keys(redis: Redis, settings: Settings) -> list[bytes]:
    """Return the requests' cache keys (every shard's)."""
    return [
        key
        for shard in keys.layout_for(settings).shards
        for key in await keys_matching(redis, shard.request_key("*", "*"))
    ]


async def command_calls(redis: Redis, command: str) -> int:
    """Return how often Redis (every node of a cluster) has run `command` (lower case, e.g. "evalsha")."""
    stats = await redis.info("commandstats", **_on_every_node(redis))
    per_node = stats.values() if redis_client.is_cluster(redis) else [stats]
    return sum(int(node.get(f"cmdstat_{command}", {}).get("calls", 0)) for node in per_node)


async def queued(redis: Redis, settings: Settings) -> int:
    """Return how many requests wait in the streams (every shard's)."""
    return sum([await redis.xlen(shard.stream) for shard in keys.layout_for(settings).shards])


async def count_rows(engine: AsyncEngine, table: str = "notifications") -> int:
    """Return the number of rows in `table`."""
    async with engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


def notify_key(tenant: Tenant) -> str:
    """`tenant`'s API key, which is also a GOV.UK Notify key: `{name}-{service_id}-{secret}`."""
    assert tenant.key[-73:-37] == str(tenant.service_id)
    return tenant.key


def notify_headers(key: str) -> dict[str, str]:
    """The headers the official Notify client sends: a fresh HS256 JWT signed with the key's secret."""
    token = create_jwt_token(key[-36:], key[-73:-37])
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


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
