"""What the app itself costs per request: CPU microseconds through its ASGI interface, with no HTTP server.

`make bench` measures the whole machine (wrk, uvicorn, Redis, Postgres and the drain sharing two cores), where
run-to-run noise is ±10 % or more. This measures only the application's own work — routing, authentication,
validation, ids, serialization, the group commit to a real Redis — by calling the ASGI app in-process with 50
concurrent callers, and reports the process's CPU time per request, which is steadier. Use it to compare two
versions of the hot path; use `make bench` for the figures that matter to a producer.

    .venv/bin/python -m loadtest.bench_app [--requests 20000] [--label ...] [--idempotency-keys] [--cluster] [--v2]
        [--access-log]

--v2 also measures, right after the native single POST, the native single POST naming an email template with one
placeholder (`single-template`) and `POST /v2/notifications/email` with the same template (`v2-email`: GOV.UK
Notify's send with a Notify JWT, as the official client sends it: a new token each second), to compare them.

--access-log writes the access log line of every request (ACCESS_LOG=true, as deployed), to /dev/null; without it
the app logs nothing per request.

Runs on embedded servers of its own; with --use-configured-servers on those DATABASE_URL / REDIS_URL name (data
is thrown away). Appends to loadtest/results/app.csv.
"""

import argparse
import asyncio
import itertools
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson
import psutil
from notifications_python_client.authentication import create_jwt_token
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from starlette.types import Message

from api.main import create_app
from devstack.embedded_cluster import EmbeddedRedisCluster
from loadtest.bench_report import append_csv
from loadtest.servers import add_servers_flag, bench_servers
from loadtest.stack import MODES
from shared import queries, redis_client, tenancy
from shared.db import create_engine
from shared.secretbox import SecretBox, new_secret_key
from shared.settings import Settings
from shared.tenancy import new_id, utc_now

RESULTS = Path(__file__).resolve().parent / "results" / "app.csv"
#: The modes of `--v2`: GOV.UK Notify's email send, and the native single POST with the same template.
V2_EMAIL = "v2-email"
SINGLE_TEMPLATE = "single-template"
CALLERS = 50


async def measure(
    database_url: str,
    redis_url: str,
    mode: str,
    requests: int,
    *,
    keyed: bool = False,
    cluster: bool = False,
    shards: int = 1,
    wait_replicas: int = 0,
    access_log: bool = False,
) -> dict[str, Any]:
    """Send `requests` requests of `mode` through the app in-process; return CPU and wall time per request.

    `keyed`: each request carries an Idempotency-Key of its own (a producer that may retry; none does here).
    `cluster`, `shards`, `wait_replicas`: REDIS_CLUSTER, STREAM_SHARDS and REDIS_WAIT_REPLICAS of the app.
    `access_log`: ACCESS_LOG (its lines go to the root logger's handlers: `main` puts one on /dev/null).
    """
    engine = create_engine(database_url, pool_size=1)
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        access_log=access_log,
        log_level="WARNING",
        max_backlog_entries=10**9,
        redis_cluster=cluster,
        stream_shards=shards,
        redis_wait_replicas=wait_replicas,
        _env_file=None,
    )
    redis = redis_client.connect(settings)
    await redis.flushdb()
    service = await tenancy.create_service(engine, f"bench-app-{time.time_ns()}")
    secret_key = new_secret_key()
    key = (await tenancy.create_api_key(engine, redis, SecretBox(secret_key), service.id, "bench")).secret
    if mode in (V2_EMAIL, SINGLE_TEMPLATE):
        async with engine.begin() as conn:
            template_id = new_id()
            await queries.insert_template(
                conn, template_id, service.id, "bench", "((band)) live", "((band)) plays tonight.", utc_now()
            )
        v2_body: dict[str, Any] = {"email_address": "example@gmail.com", "template_id": str(template_id)}
        v2_body["personalisation"] = {"band": "Incubus"}
    await engine.dispose()
    app = create_app(settings.model_copy(update={"secret_key": SecretStr(secret_key)}))
    if mode == V2_EMAIL:
        path, body, per_request = "/v2/notifications/email", orjson.dumps(v2_body), 1
    elif mode == SINGLE_TEMPLATE:  # the native twin of the v2 send: the same template and personalisation
        native = {"to": v2_body["email_address"], "template_id": v2_body["template_id"]}
        path, body, per_request = (
            "/notifications/v1/",
            orjson.dumps(native | {"personalization": {"band": "Incubus"}}),
            1,
        )
    else:
        path, body, per_request = MODES[mode]
    headers = [
        (b"host", b"localhost"),
        (b"authorization", f"Bearer {key}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    token_second = -1

    def notify_headers() -> list[tuple[bytes, bytes]]:
        """A Notify client's headers: its JWT changes with `iat`, once a second."""
        nonlocal token_second
        if int(time.time()) != token_second:
            token_second = int(time.time())
            token: str = create_jwt_token(key[-36:], key[-73:-37])  # type: ignore[no-untyped-call]
            headers[1] = (b"authorization", f"Bearer {token}".encode())
        return headers

    serial = itertools.count()

    async def call() -> None:
        plain = notify_headers() if mode == V2_EMAIL else headers
        keyed_headers = [*plain, (b"idempotency-key", f"bench-{next(serial)}".encode())] if keyed else plain
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": keyed_headers,
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000), "state": {},
        }  # fmt: skip
        messages: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
        statuses = []

        async def receive() -> Message:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)
        if statuses != [201]:
            raise RuntimeError(f"expected a 201, got {statuses}")

    async def caller(count: int) -> None:
        for _ in range(count):
            await call()

    servers = [psutil.Process(pid) for pid in await _redis_pids(redis, cluster)]
    async with app.router.lifespan_context(app):
        await asyncio.gather(*(caller(20) for _ in range(CALLERS)))  # warm up
        redis_cpu = sum(_cpu_seconds(server) for server in servers)
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller(requests // CALLERS) for _ in range(CALLERS)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        redis_cpu = sum(_cpu_seconds(server) for server in servers) - redis_cpu
    await redis.flushdb()
    await redis.aclose()
    done = requests // CALLERS * CALLERS
    return {
        "mode": mode + ("+key" if keyed else "") + ("+log" if access_log else ""),
        "redis": f"cluster of {len(servers)} nodes, {shards} shards, wait {wait_replicas}" if cluster else "single",
        "requests": done,
        "cpu_us_per_request": round(1e6 * cpu / done, 1),
        "redis_cpu_us_per_request": round(1e6 * redis_cpu / done, 1),
        "cpu_us_per_notification": round(1e6 * cpu / done / per_request, 2),
        "requests_per_s": round(done / wall),
    }


async def _redis_pids(redis: Redis, cluster: bool) -> list[int]:
    """The process ids of the Redis server, or of every node of the cluster (all on this machine here)."""
    if not cluster:
        return [int((await redis.info("server"))["process_id"])]
    per_node = await cast(Any, redis).info("server", target_nodes=RedisCluster.ALL_NODES)
    return [int(info["process_id"]) for info in per_node.values()]


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def main() -> None:
    """Measure single and multiple(100), print and record."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000, help="single POSTs (multiple: a tenth of it)")
    parser.add_argument("--label", default="")
    parser.add_argument(
        "--idempotency-keys", action="store_true", help="also measure both with an Idempotency-Key on every request"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="also run on a local Redis Cluster (3 primaries with a replica each, 3 shards), with "
        "REDIS_WAIT_REPLICAS 0 and 1, beside the single Redis",
    )
    parser.add_argument(
        "--v2", action="store_true", help="also measure GOV.UK Notify's POST /v2/notifications/email after single"
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log every request's access line (to /dev/null), as deployed"
    )
    add_servers_flag(parser)
    args = parser.parse_args()
    if args.access_log:  # the app's log set-up formats the handlers it finds (`shared.logs`)
        logging.getLogger().addHandler(logging.StreamHandler(open(os.devnull, "w")))  # noqa: SIM115 - the whole run
    when = datetime.now(UTC).isoformat(timespec="seconds")
    rows = []
    modes = (
        ("single", args.requests),
        *(((SINGLE_TEMPLATE, args.requests), (V2_EMAIL, args.requests)) if args.v2 else ()),
        ("multiple", args.requests // 10),
    )
    with bench_servers(args.use_configured_servers) as (database_url, redis_url), ExitStack() as stack:
        runs: list[tuple[str, int, dict[str, Any]]] = [
            (mode, requests, {"keyed": keyed, "access_log": args.access_log})
            for mode, requests in modes
            for keyed in ((False, True) if args.idempotency_keys else (False,))
        ]
        cluster_url = ""
        if args.cluster:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            cluster_url = stack.enter_context(_cluster(folder)).url
            runs += [
                (mode, requests, {"cluster": True, "shards": 3, "wait_replicas": wait})
                for mode, requests in modes
                for wait in (0, 1)
            ]
        for mode, requests, options in runs:
            url = cluster_url if options.get("cluster") else redis_url
            figures = asyncio.run(measure(database_url, url, mode, requests, **options))
            rows.append({"when": when, "label": args.label, **figures})
            print(rows[-1], flush=True)
    append_csv(RESULTS, rows)


@contextmanager
def _cluster(folder: Path) -> Iterator[EmbeddedRedisCluster]:
    cluster = EmbeddedRedisCluster(folder, primaries=3, replicas=1).start()
    try:
        yield cluster
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
