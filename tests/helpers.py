"""Plain helpers of the suite (the fixtures are in conftest.py): tenants, draining, counting, processes."""

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import httpx
import pytest
from notifications_python_client.authentication import create_jwt_token
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.main import create_app
from shared import api_key_format, keys, queries, redis_client, tenancy
from shared.db import upgrade_database
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
    """Redis busy for `seconds` (DEBUG SLEEP, as a stalled server): commands sent meanwhile run once it wakes.

    Entered once Redis has stopped answering: a PING that gets no answer within a quarter of a second is the sign
    the sleep has begun (a fixed wait for it could be missed on a busy machine, and a command sent before the sleep
    would run at once). The sleep must be long enough to leave the caller its stall after that.
    """
    on_every_node = {"target_nodes": RedisCluster.ALL_NODES} if redis_client.is_cluster(redis) else {}
    sleeping = asyncio.create_task(redis.execute_command("DEBUG", "SLEEP", str(seconds), **on_every_node))
    for _ in range(200):  # each try ~0.25 s at most: far past any sleep a test asks for
        try:
            await asyncio.wait_for(redis.execute_command("PING", **on_every_node), 0.25)
        except TimeoutError:
            break  # no answer: asleep
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("Redis kept answering: DEBUG SLEEP never began")
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


#: The SECRET_KEY of the test settings, which `make_tenant` seals its keys' secrets with too.
TEST_SECRET_KEY = new_secret_key()


#: How far `clock_ahead` moves a process's clock: past RETENTION_DAYS's default (7), as in issue 19's report.
CLOCK_AHEAD_DAYS = 9


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
            conn,
            tenancy.new_id(),
            service_id,
            "legacy",
            key[:10],
            api_key_format.hash_key(key),
            None,
            tenancy.utc_now(),
        )
    await tenancy.load_registry(engine, redis)  # as the registry of that version held it
    return key


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


def cli(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run `python -m shared.cli ARGS` in `cwd` (the checkout, whose `.data/` may hold a `make run`'s files)."""
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


class Workers:
    """Starts worker processes with their output in files, and stops whatever is left at the end."""

    def __init__(self, venv_bin: Path, env: dict[str, str], logs: Path) -> None:
        self.venv_bin, self.env, self.logs = venv_bin, env, logs
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, **settings: str) -> subprocess.Popen[bytes]:
        log = self.logs / f"worker-{len(self.started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(self.venv_bin / "arq"), "worker.main.WorkerSettings"],
                env={**self.env, **settings},
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started.append((process, log))
        return process

    def log(self, process: subprocess.Popen[bytes]) -> str:
        return next(log for p, log in self.started if p is process).read_text()

    def stop_all(self) -> None:
        for process, _ in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


async def wait_for(condition: Callable[[], Awaitable[bool]], limit: float = 60.0) -> None:
    """Poll `condition` until it holds, failing the test after `limit` seconds."""
    deadline = asyncio.get_running_loop().time() + limit
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {limit}s")
        await asyncio.sleep(0.1)


async def stop(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> int:
    """Send `sig` and wait for the process to exit; return its exit code."""
    process.send_signal(sig)
    for _ in range(300):
        if process.poll() is not None:
            return process.returncode
        await asyncio.sleep(0.1)
    pytest.fail("worker did not exit within 30s")
