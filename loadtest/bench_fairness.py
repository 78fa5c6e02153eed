"""`make bench-fairness`: does a service flooding past its rate limit slow another service down?

One API process and one drain worker (as `make run`), on servers of the benchmark's own. A `calm` service sends
single POSTs at a modest fixed rate while a `flood` service sends multiple(100) POSTs at a fixed rate far above
what its limit allows, in three windows of the same length:

- `calm alone`: no flood (the reference);
- `flood, unlimited`: the flood has no limit, so everything it sends is accepted, queued and stored;
- `flood, limited`: the flood is limited to --flood-limit notifications per minute (`PATCH /services/v1/{id}`'s
  setting, through `shared.ratelimits`), so most of it is refused with 429 (its bucket starts full: a minute's
  worth is accepted at once, then the limit's rate).

For each window it prints the calm service's acceptance and latency p50/p99 (fixed-rate load: the latency counts
from when each request was due) and what the flood got (201s and 429s), and the CPU seconds of each process.
Appends to loadtest/results/fairness.csv.

    .venv/bin/python -m loadtest.bench_fairness [--seconds 15] [--calm-rate 200] [--flood-rate 700]
        [--flood-limit 6000] [--use-configured-servers]
"""

import argparse
import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from redis.asyncio import Redis

from devstack.embedded import free_port
from loadtest.bench_report import append_csv
from loadtest.loadgen import LoadResult, run_fixed_rate
from loadtest.measure import CpuMeter
from loadtest.servers import add_servers_flag, bench_servers
from loadtest.stack import BIN, DESIGNS, MULTIPLE, ROOT, SINGLE, spawn, stop, wait_port
from shared import keys, ratelimits, tenancy
from shared.db import create_engine
from shared.secretbox import SecretBox, new_secret_key

RESULTS = ROOT / "loadtest" / "results"


async def _tenants(database_url: str, redis_url: str, secret_key: str) -> dict[str, tuple[UUID, str]]:
    engine = create_engine(database_url, pool_size=1)
    redis = Redis.from_url(redis_url)
    made = {}
    for name in ("calm", "flood"):
        service = await tenancy.create_service(engine, f"fairness-{name}-{time.time_ns()}")
        key = await tenancy.create_api_key(engine, redis, SecretBox(secret_key), service.id, "bench")
        made[name] = (service.id, key.secret)
    await redis.aclose()
    await engine.dispose()
    return made


async def _set_limit(database_url: str, redis_url: str, service_id: UUID, per_minute: int | None) -> None:
    engine = create_engine(database_url, pool_size=1)
    redis = Redis.from_url(redis_url)
    await ratelimits.set_rate_limit(engine, redis, service_id, per_minute)
    await redis.aclose()
    await engine.dispose()


async def _wait_drained(redis_url: str) -> None:
    """Wait (up to 2 minutes) until the workers have drained the stream, so that windows do not overlap."""
    redis = Redis.from_url(redis_url)
    for _ in range(240):
        if not await redis.xlen(keys.STREAM):
            break
        await asyncio.sleep(0.5)
    await redis.aclose()


async def _window(
    port: int, calm_key: str, flood_key: str | None, args: argparse.Namespace
) -> tuple[LoadResult, LoadResult | None]:
    calm = run_fixed_rate(
        "127.0.0.1", port, "/notifications/v1/", SINGLE, {"Authorization": f"Bearer {calm_key}"},
        args.calm_rate, args.seconds, connections=32,
    )  # fmt: skip
    if flood_key is None:
        return await calm, None
    flood = run_fixed_rate(
        "127.0.0.1", port, "/notifications/v1/multiple", MULTIPLE, {"Authorization": f"Bearer {flood_key}"},
        args.flood_rate, args.seconds, connections=64,
    )  # fmt: skip
    calm_result, flood_result = await asyncio.gather(calm, flood)
    return calm_result, flood_result


def main() -> None:
    """Run the three windows and print and record what the calm service saw in each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--calm-rate", type=float, default=200, help="the calm service's single POSTs per second")
    parser.add_argument("--flood-rate", type=float, default=700, help="the flood's multiple(100) POSTs per second")
    parser.add_argument("--flood-limit", type=int, default=6_000, help="the flood's limit, notifications/minute")
    parser.add_argument("--label", default="")
    add_servers_flag(parser)
    args = parser.parse_args()

    with bench_servers(args.use_configured_servers) as (database_url, redis_url), tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        secret_key = new_secret_key()
        tenants = asyncio.run(_tenants(database_url, redis_url, secret_key))
        (_, calm_key), (flood_id, flood_key) = tenants["calm"], tenants["flood"]
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "ACCESS_LOG": "false",
            "LOG_LEVEL": "WARNING",
            "AUTH_CACHE_SECONDS": "1",
            "SECRET_KEY": secret_key,
            "PYTHONPATH": str(ROOT),
            "WORKER_METRICS_PORT": "0",
        }
        port = free_port()
        api = spawn(
            [str(BIN / "uvicorn"), DESIGNS["service"], "--port", str(port), "--no-access-log", "--log-level",
             "warning"],
            env,
            tmp / "api.log",
        )  # fmt: skip
        worker = spawn([str(BIN / "arq"), "worker.main.WorkerSettings"], env, tmp / "worker.log")
        rows = []
        try:
            wait_port(port)
            time.sleep(1.0)
            windows = [
                ("calm alone", None, None),
                ("flood, unlimited", flood_key, None),
                (f"flood, limited to {args.flood_limit}/min", flood_key, args.flood_limit),
            ]
            for name, key, limit in windows:
                asyncio.run(_set_limit(database_url, redis_url, flood_id, limit))
                time.sleep(1.5)  # AUTH_CACHE_SECONDS=1: every process has the new limit
                meter = CpuMeter({"api": api.pid, "worker": worker.pid})
                meter.start()
                calm, flood = asyncio.run(_window(port, calm_key, key, args))
                cpu = meter.stop()
                asyncio.run(_wait_drained(redis_url))
                row = {
                    "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "label": args.label,
                    "window": name,
                    "seconds": args.seconds,
                    "calm_rate": args.calm_rate,
                    "calm_ok_pct": round(100 * calm.ok / max(1, calm.sent), 2),
                    "calm_p50_ms": round(calm.percentile(50) * 1000, 2),
                    "calm_p99_ms": round(calm.percentile(99) * 1000, 2),
                    "flood_rate": args.flood_rate if flood else 0,
                    "flood_accepted_per_s": round(100 * flood.ok / flood.seconds) if flood else 0,
                    "flood_refused": flood.failed if flood else 0,
                    "api_cpu_pct": cpu["api"],
                    "worker_cpu_pct": cpu["worker"],
                }
                rows.append(row)
                print(row, flush=True)
        finally:
            stop(api)
            stop(worker)
    append_csv(RESULTS / "fairness.csv", rows)
    print()
    print(
        "| window | calm accepted | calm p50 | calm p99 | flood accepted notifications/s | flood refused "
        "| API CPU | worker CPU |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['window']} | {row['calm_ok_pct']} % | {row['calm_p50_ms']} ms | {row['calm_p99_ms']} ms "
            f"| {row['flood_accepted_per_s']} | {row['flood_refused']} | {row['api_cpu_pct']} % "
            f"| {row['worker_cpu_pct']} % |"
        )


if __name__ == "__main__":
    main()
