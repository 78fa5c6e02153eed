"""REDIS_CLUSTER: the service on a real Redis Cluster (3 primaries of the embedded redis-server), sharded stream.

The write path (group commit per shard), GET from the cluster and from Postgres, the drain of every shard,
idempotency keys, rate limits, readiness, the key registry and dead letters, each through redis-py's RedisCluster.
"""

import asyncio
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.crc import key_slot
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.main import create_app
from devstack.embedded_cluster import EmbeddedRedisCluster
from shared import deadletters, keys, ratelimits, redis_client
from shared.ids import stem_and_index
from shared.schemas import BRIEF_EXAMPLE, BRIEF_MULTIPLE_EXAMPLE
from shared.settings import Settings
from tests.helpers import ROOT, Servers, Tenant, cli, count_rows, make_tenant, notify_headers, notify_key
from worker.drain import Drain

BASE = "/notifications/v1"
SHARDS = 3
LAYOUT = keys.layout(SHARDS, cluster=True)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    """Three primaries, started once for this module (~2 s)."""
    cluster = EmbeddedRedisCluster(Path(tmp_path_factory.mktemp("cluster"))).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_settings(settings: Settings, redis_cluster: EmbeddedRedisCluster) -> Settings:
    """The test settings on the cluster, with three shards."""
    return settings.model_copy(update={"redis_url": redis_cluster.url, "redis_cluster": True, "stream_shards": SHARDS})


@pytest_asyncio.fixture(loop_scope="session")
async def cluster_redis(cluster_settings: Settings, engine: AsyncEngine) -> AsyncIterator[Redis]:
    """A RedisCluster client on an empty cluster (`engine` empties the database)."""
    client = redis_client.connect(cluster_settings)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def cluster_tenant(engine: AsyncEngine, cluster_redis: Redis) -> Tenant:
    """A service whose key is registered in the cluster."""
    return await make_tenant(engine, cluster_redis, "cluster-tenant")


@pytest_asyncio.fixture(loop_scope="session")
async def http(cluster_settings: Settings, cluster_tenant: Tenant) -> AsyncIterator[httpx.AsyncClient]:
    """The API on the cluster, through its ASGI interface with its lifespan running."""
    app = create_app(cluster_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=cluster_tenant.headers
        ) as client:
            yield client


async def _drain_every_shard(redis: Redis, engine: AsyncEngine, settings: Settings) -> int:
    stored = 0
    for shard in LAYOUT.shards:
        drain = Drain(redis, engine, settings, "cluster-consumer", shard)
        await drain.ensure_group()
        while batch := await drain.read_new():
            stored += await drain.drain_batch(batch)
    return stored


async def _slots_of_primaries(redis: Redis) -> list[tuple[int, int]]:
    slots = cast(dict[str, Any], await redis.cluster_slots())  # type: ignore[attr-defined]
    return sorted((int(low), int(high)) for low, high in slots)


async def test_shards_spread_over_the_primaries(cluster_redis: Redis) -> None:
    ranges = await _slots_of_primaries(cluster_redis)
    assert len(ranges) == 3
    owners = set()
    for shard in LAYOUT.shards:
        slot = key_slot(shard.stream.encode())
        owners.add(next(n for n, (low, high) in enumerate(ranges) if low <= slot <= high))
    assert owners == {0, 1, 2}  # one shard on each primary


async def test_accept_get_drain_and_get_again_on_a_cluster(
    http: httpx.AsyncClient, cluster_redis: Redis, engine: AsyncEngine, cluster_settings: Settings
) -> None:
    singles = [(await http.post(f"{BASE}/", json=BRIEF_EXAMPLE)).json() for _ in range(30)]
    many = (await http.post(f"{BASE}/multiple", json=BRIEF_MULTIPLE_EXAMPLE)).json()
    accepted = singles + many
    assert all([await cluster_redis.xlen(shard.stream) > 0 for shard in LAYOUT.shards])
    assert [(await http.get(f"{BASE}/{item['id']}")).json() for item in accepted] == accepted
    ready = (await http.get("/status/ready")).json()
    assert ready["redis"] == "ok"
    assert ready["backlog_entries"] == 31
    assert len(ready["backlog_entries_by_shard"]) == SHARDS
    assert sum(ready["backlog_entries_by_shard"]) == 31

    assert await _drain_every_shard(cluster_redis, engine, cluster_settings) == len(accepted)

    assert await count_rows(engine) == len(accepted)
    for item in accepted:  # the cache gone: GET must ask Postgres
        shard = LAYOUT.shard_of_id(item["id"])
        await cluster_redis.delete(shard.request_key(item["service_id"], stem_and_index(item["id"])[0]))
    assert [(await http.get(f"{BASE}/{item['id']}")).json() for item in accepted] == accepted
    assert (await http.get("/status/ready")).json()["backlog_entries"] == 0


async def test_idempotency_keys_on_a_cluster(http: httpx.AsyncClient, cluster_redis: Redis) -> None:
    for n in range(6):
        keyed = {"Idempotency-Key": f"cluster-{n}"}
        first = await http.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=keyed)
        again = await http.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=keyed)
        assert (first.status_code, again.status_code) == (201, 201)
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
    assert sum([await cluster_redis.xlen(shard.stream) for shard in LAYOUT.shards]) == 6


async def test_rate_limits_on_a_cluster(
    http: httpx.AsyncClient, cluster_redis: Redis, engine: AsyncEngine, cluster_tenant: Tenant
) -> None:
    await ratelimits.set_rate_limit(engine, cluster_redis, cluster_tenant.service_id, 2)
    limited = [await http.post(f"{BASE}/", json=BRIEF_EXAMPLE) for _ in range(30)]
    assert {answer.status_code for answer in limited} == {201, 429}
    assert 2 <= len([answer for answer in limited if answer.status_code == 201]) <= 2 * SHARDS


async def test_an_unknown_key_is_refused_by_the_registry_on_the_cluster(http: httpx.AsyncClient) -> None:
    answer = await http.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers={"Authorization": "Bearer nk_" + "x" * 43})
    assert answer.status_code == 401


async def test_dead_letters_are_listed_and_replayed_per_shard(cluster_redis: Redis) -> None:
    shard = LAYOUT.shards[1]
    await cluster_redis.xadd(shard.dead_letters, {"entry": "1-1", "payload": b"[]", "error": "test"})

    listed = await deadletters.list_dead_letters(cluster_redis, layout=LAYOUT)
    assert [letter.error for letter in listed] == ["test"]
    assert await deadletters.replay(cluster_redis, layout=LAYOUT) == 1
    assert await cluster_redis.xlen(shard.dead_letters) == 0
    assert await cluster_redis.xlen(shard.stream) == 1


async def test_a_real_worker_drains_every_shard_of_the_cluster(
    http: httpx.AsyncClient,
    engine: AsyncEngine,
    redis_cluster: EmbeddedRedisCluster,
    servers: Servers,
    worker_env: dict[str, str],
    venv_bin: Path,
    tmp_path: Path,
) -> None:
    accepted = [(await http.post(f"{BASE}/", json=BRIEF_EXAMPLE)).json() for _ in range(30)]
    env = {
        **worker_env,
        "REDIS_URL": redis_cluster.url,
        "REDIS_CLUSTER": "true",
        "STREAM_SHARDS": str(SHARDS),
        "ARQ_REDIS_URL": servers.redis_url,  # arq's scheduler on the plain Redis
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything else runs
            [str(venv_bin / "arq"), "worker.main.WorkerSettings"], env=env, cwd=ROOT, stdout=out, stderr=out
        )
    try:
        for _ in range(300):
            if await count_rows(engine) == len(accepted):
                break
            await asyncio.sleep(0.1)
        assert await count_rows(engine) == len(accepted), log.read_text()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    assert len(re.findall(r"drain \S+ stopped after storing", log.read_text())) == SHARDS  # one loop per shard


def test_without_arq_redis_url_a_cluster_worker_says_what_to_set(worker_env: dict[str, str], venv_bin: Path) -> None:
    env = {**worker_env, "REDIS_CLUSTER": "true"}
    env.pop("ARQ_REDIS_URL", None)
    done = subprocess.run(
        [str(venv_bin / "arq"), "worker.main.WorkerSettings"], env=env, cwd=ROOT, capture_output=True, timeout=60
    )
    assert done.returncode != 0
    assert b"set ARQ_REDIS_URL" in done.stderr + done.stdout


async def test_with_wait_replicas_and_no_replica_a_write_is_applied_but_never_answered_201(
    settings: Settings, redis: Redis, tenant: Tenant
) -> None:
    waiting = settings.model_copy(update={"redis_wait_replicas": 1, "redis_timeout_seconds": 0.5})
    app = create_app(waiting)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=tenant.headers) as client:
            answer = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE)
            assert answer.status_code == 503
            assert "0 of the REDIS_WAIT_REPLICAS=1 replicas confirmed it" in answer.json()["detail"]
            found = re.search(r"GET /notifications/v1/(\S+) answers", answer.json()["detail"])
            assert found is not None
            first_id = found.group(1)
            assert (await client.get(f"{BASE}/{first_id}")).status_code == 200  # applied, on the primary only
    assert await redis.xlen(keys.STREAM) == 1


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[EmbeddedRedisCluster]:
    """Three primaries with a replica each (this test kills one primary: the cluster is its own)."""
    cluster = EmbeddedRedisCluster(tmp_path / "replicated", primaries=3, replicas=1).start()
    yield cluster
    cluster.stop()


async def test_a_primary_killed_under_load_gives_503s_then_recovers_and_loses_no_accepted_notification(
    settings: Settings,
    engine: AsyncEngine,
    replicated_cluster: EmbeddedRedisCluster,
    servers: Servers,
    worker_env: dict[str, str],
    venv_bin: Path,
    tmp_path: Path,
) -> None:
    on_cluster = settings.model_copy(
        update={
            "redis_url": replicated_cluster.url,
            "redis_cluster": True,
            "stream_shards": SHARDS,
            "redis_wait_replicas": 1,
            "redis_timeout_seconds": 1.0,
        }
    )
    client = redis_client.connect(on_cluster)
    tenant = await make_tenant(engine, client, "failover")
    app = create_app(on_cluster)
    statuses: list[int] = []
    accepted: list[str] = []
    env = {
        **worker_env,
        "REDIS_URL": replicated_cluster.url,
        "REDIS_CLUSTER": "true",
        "STREAM_SHARDS": str(SHARDS),
        "REDIS_TIMEOUT_SECONDS": "1",
        "ARQ_REDIS_URL": servers.redis_url,
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:  # a real worker drains all along, through the failover
        worker = subprocess.Popen(  # noqa: ASYNC220 - started once, before the load
            [str(venv_bin / "arq"), "worker.main.WorkerSettings"], env=env, cwd=ROOT, stdout=out, stderr=out
        )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=tenant.headers) as http:

            async def send(seconds: float) -> None:
                deadline = asyncio.get_running_loop().time() + seconds
                while asyncio.get_running_loop().time() < deadline:
                    answer = await http.post(f"{BASE}/", json=BRIEF_EXAMPLE)
                    statuses.append(answer.status_code)
                    if answer.status_code == 201:
                        accepted.append(answer.json()["id"])
                    else:
                        await asyncio.sleep(0.05)

            await asyncio.gather(*(send(1.0) for _ in range(8)))
            before = len(accepted)
            address = cast(Any, client).get_node_from_key(LAYOUT.shards[0].stream)
            victim = next(node for node in replicated_cluster.nodes if node.port == address.port)
            victim.stop(kill=True)
            await asyncio.gather(*(send(8.0) for _ in range(8)))
            during = list(statuses[before:])
            # its replica is now the primary, with no replica left to confirm writes (REDIS_WAIT_REPLICAS=1): the
            # killed node comes back and joins as the replica of the new primary
            victim.start()
            await asyncio.gather(*(send(8.0) for _ in range(8)))
            recent = statuses[-40:]

    assert before > 50
    assert set(statuses) <= {201, 503}, sorted(set(statuses))  # never a 500
    assert 503 in during  # the seconds the cluster needed (and the shard without a replica to confirm)
    assert 201 in during  # the other shards' writes went on once the cluster was up again
    assert recent.count(201) == len(recent)  # recovered by itself: every shard takes writes again
    assert len(set(accepted)) == len(accepted)
    # every notification answered 201 survived the failover, and the worker, which carried on, stored it
    try:
        for _ in range(600):
            async with engine.connect() as conn:
                stored = {str(row[0]) for row in await conn.execute(text("SELECT id FROM notifications"))}
            if set(accepted) <= stored:
                break
            await asyncio.sleep(0.1)
        assert set(accepted) <= stored, log.read_text()[-3000:]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        await client.aclose()


async def test_a_gov_uk_notify_send_on_a_cluster_is_readable_at_once_and_after_the_drain(
    http: httpx.AsyncClient,
    cluster_redis: Redis,
    engine: AsyncEngine,
    cluster_settings: Settings,
    cluster_tenant: Tenant,
) -> None:
    native = {"Authorization": f"Bearer {cluster_tenant.key}"}
    template = await http.post(
        "/templates/v1/", json={"name": "code", "type": "sms", "body": "Code ((c))"}, headers=native
    )
    notify = notify_headers(notify_key(cluster_tenant))
    sent = [
        await http.post(
            "/v2/notifications/sms",
            json={"phone_number": "07700900123", "template_id": template.json()["id"], "personalisation": {"c": n}},
            headers=notify,
        )
        for n in range(12)
    ]
    assert {answer.status_code for answer in sent} == {201}
    ids = [answer.json()["id"] for answer in sent]
    assert len({LAYOUT.shard_of_id(notification_id).index for notification_id in ids}) > 1  # spread (3^-11: all in one)
    for notification_id in ids:
        assert (await http.get(f"/v2/notifications/{notification_id}", headers=notify)).json()["status"] == "created"

    assert await _drain_every_shard(cluster_redis, engine, cluster_settings) == 12
    listed = await http.get("/v2/notifications", headers=notify)
    assert {item["id"] for item in listed.json()["notifications"]} == set(ids)


def test_the_cli_on_a_cluster(redis_cluster: EmbeddedRedisCluster, worker_env: dict[str, str]) -> None:
    env = {**worker_env, "REDIS_URL": redis_cluster.url, "REDIS_CLUSTER": "true", "STREAM_SHARDS": str(SHARDS)}
    created = cli(env, "services", "create", "cli-on-cluster")
    assert created.returncode == 0, created.stderr
    service_id = re.search(r"id=(\S+)", created.stdout).group(1)  # type: ignore[union-attr]
    key = cli(env, "keys", "create", service_id, "laptop")
    assert key.returncode == 0, key.stderr
    key_id = re.search(r"^id=(\S+)", key.stdout).group(1)  # type: ignore[union-attr]
    assert cli(env, "services", "rate-limit", service_id, "60").returncode == 0
    assert cli(env, "keys", "revoke", service_id, key_id).returncode == 0
    listed = cli(env, "dead-letters", "list")
    assert listed.returncode == 0, listed.stderr


async def test_the_group_commit_reaches_a_cluster_that_wants_a_password(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    cluster = EmbeddedRedisCluster(tmp_path / "guarded").start()
    try:
        for node in cluster.nodes:
            plain = Redis.from_url(node.url)
            await plain.config_set("requirepass", "s3cret")
            await plain.aclose()
        guarded = settings.model_copy(
            update={"redis_url": cluster.url.replace("redis://", "redis://:s3cret@"), "redis_cluster": True}
        )
        client = redis_client.connect(guarded)
        tenant = await make_tenant(engine, client, "guarded")
        app = create_app(guarded)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=tenant.headers) as http:
                answer = await http.post(f"{BASE}/", json=BRIEF_EXAMPLE)
        assert answer.status_code == 201, answer.text  # the shard's node client authenticated as the cluster's
        assert await client.xlen(keys.layout(1, cluster=True).shards[0].stream) == 1
        await client.aclose()
    finally:
        cluster.stop()


async def test_with_wait_replicas_short_a_refused_or_replayed_request_is_still_told_so(
    settings: Settings, redis: Redis, engine: AsyncEngine, tenant: Tenant
) -> None:
    waiting = settings.model_copy(update={"redis_wait_replicas": 1, "redis_timeout_seconds": 0.3})
    app = create_app(waiting)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=tenant.headers) as client:
            keyed = {"Idempotency-Key": "unconfirmed"}
            first = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=keyed)
            replay = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=keyed)
            await ratelimits.set_rate_limit(engine, redis, tenant.service_id, 1)
            limited = create_app(waiting)  # a fresh process: the limit is read at once
            async with limited.router.lifespan_context(limited):
                other = httpx.ASGITransport(app=limited)
                async with httpx.AsyncClient(transport=other, base_url="http://t", headers=tenant.headers) as http:
                    queued_once = await http.post(f"{BASE}/", json=BRIEF_EXAMPLE)
                    refused = await http.post(f"{BASE}/", json=BRIEF_EXAMPLE)

    assert first.status_code == 503  # queued, on the primary only
    assert (replay.status_code, replay.headers.get("idempotent-replayed")) == (201, "true")  # the record is found
    assert queued_once.status_code == 503
    assert refused.status_code == 429  # nothing was queued: the 429, not "perhaps queued"


async def _blocked_clients(cluster: EmbeddedRedisCluster) -> int:
    total = 0
    for node in cluster.nodes:
        client = Redis(host="127.0.0.1", port=node.port)
        try:
            total += int((await client.info("clients"))["blocked_clients"])
        finally:
            await client.aclose()
    return total


@pytest.fixture
def restarted_cluster(tmp_path: Path) -> Iterator[EmbeddedRedisCluster]:
    """Three primaries that this test restarts (the cluster is its own)."""
    cluster = EmbeddedRedisCluster(tmp_path / "restarted").start()
    yield cluster
    cluster.stop()


async def test_a_cluster_client_that_lost_every_node_at_once_learns_the_cluster_again(
    cluster_settings: Settings, restarted_cluster: EmbeddedRedisCluster
) -> None:
    # A worker's drains share one client, each blocked on its shard's stream (one per primary). When every node
    # goes away at once (a restart; or the client closing their connections itself to re-initialise, as it does
    # on CLUSTERDOWN while a cluster forms), each read fails on its connection and redis-py forgets that node for
    # good (issue #3693): with all forgotten it could never connect again.
    settings = cluster_settings.model_copy(update={"redis_url": restarted_cluster.url, "redis_timeout_seconds": 2})
    client = redis_client.connect(settings, read_slack_seconds=60)
    try:
        await client.ping()
        streams = [shard.stream for shard in LAYOUT.shards]
        reads = [asyncio.create_task(client.xread({stream: "$"}, block=60_000)) for stream in streams]
        for _ in range(300):
            if await _blocked_clients(restarted_cluster) == len(streams):
                break
            await asyncio.sleep(0.1)
        assert await _blocked_clients(restarted_cluster) == len(streams)
        for node in restarted_cluster.nodes:
            node.stop(kill=True)
        failed = await asyncio.gather(*reads, return_exceptions=True)
        assert all(isinstance(error, Exception) for error in failed), failed
        for node in restarted_cluster.nodes:
            node.start()
        await asyncio.to_thread(restarted_cluster.wait_ok)
        # the nodes answer again, at the addresses the client was configured with: it must find them
        await client.set("{a}after", "1")
        assert await client.get("{a}after") == b"1"
    finally:
        await client.aclose()


@pytest.fixture
def unformed_cluster(tmp_path: Path) -> Iterator[EmbeddedRedisCluster]:
    """Six cluster-enabled nodes, running but not joined yet (as compose starts them before redis-cluster-init)."""
    cluster = EmbeddedRedisCluster(tmp_path / "unformed", primaries=3, replicas=1).start(form=False)
    yield cluster
    cluster.stop()


async def test_a_worker_started_before_the_cluster_is_formed_drains_once_it_is(
    settings: Settings,
    engine: AsyncEngine,
    unformed_cluster: EmbeddedRedisCluster,
    servers: Servers,
    worker_env: dict[str, str],
    venv_bin: Path,
    tmp_path: Path,
) -> None:
    shards = 6  # as the compose file's cluster profile: two drains on each primary
    env = {
        **worker_env,
        "REDIS_URL": unformed_cluster.url,
        "REDIS_CLUSTER": "true",
        "STREAM_SHARDS": str(shards),
        "ARQ_REDIS_URL": servers.redis_url,
        "DB_RETRY_MAX_SECONDS": "1",
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(  # noqa: ASYNC220 - started once, before the cluster exists
            [str(venv_bin / "arq"), "worker.main.WorkerSettings"], env=env, cwd=ROOT, stdout=out, stderr=out
        )
    try:
        for _ in range(600):  # the worker met the unformed cluster and failed on it
            if "All slots are not covered" in log.read_text():
                break
            await asyncio.sleep(0.1)
        assert "All slots are not covered" in log.read_text(), log.read_text()
        await asyncio.to_thread(unformed_cluster.form)
        on_cluster = settings.model_copy(
            update={"redis_url": unformed_cluster.url, "redis_cluster": True, "stream_shards": shards}
        )
        client = redis_client.connect(on_cluster)
        try:
            tenant = await make_tenant(engine, client, "formed-late")
        finally:
            await client.aclose()
        app = create_app(on_cluster)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=tenant.headers) as http:
                accepted = [(await http.post(f"{BASE}/", json=BRIEF_EXAMPLE)).json()["id"] for _ in range(30)]
        for _ in range(600):  # stored by the same worker, never restarted
            if await count_rows(engine) == len(accepted):
                break
            await asyncio.sleep(0.1)
        assert await count_rows(engine) == len(accepted), log.read_text()[-5000:]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
