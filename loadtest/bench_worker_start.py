"""Worker start benchmark: seconds from starting `arq worker.main.WorkerSettings` to its first stored row.

Workers are scaled out on demand, so a new one is only useful once it stores rows. Each run truncates the
notifications, queues one request of --per-request notifications exactly as the API would (into a stream whose
consumer group exists, as in production), starts the worker as a subprocess, polls Postgres every 10 ms on an
open connection until the first row is there, then stops the worker with SIGTERM. Prints each run and the
median/min/max, and appends them to loadtest/results/worker_start.csv.

    .venv/bin/python -m loadtest.bench_worker_start [--runs 5] [--label ...]

The worker inherits this process's environment (PYTHONDONTWRITEBYTECODE included, which decides whether Python
compiles every module afresh on each start). Runs on embedded servers of its own in a temporary folder; with
--use-configured-servers on those DATABASE_URL / REDIS_URL name (the notifications are TRUNCATED, the Redis
database FLUSHED).
"""

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

from loadtest.bench_drain import SERVICE_ID, fill
from loadtest.bench_report import append_csv
from loadtest.servers import add_servers_flag, bench_servers
from shared import keys

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtest" / "results" / "worker_start.csv"
POLL_SECONDS = 0.01
#: The worker's command: the `arq` next to this interpreter (the venv's).
WORKER_COMMAND = [str(Path(sys.executable).parent / "arq"), "worker.main.WorkerSettings"]


async def first_row_seconds(
    conn: asyncpg.Connection, redis: Redis, env: dict[str, str], per_request: int, give_up_after: float
) -> float:
    """Queue one request, start a worker, and return the seconds from its start to the first stored row."""
    await conn.execute("TRUNCATE notifications CASCADE")
    await redis.flushdb()
    await fill(redis, per_request, per_request)
    await redis.xgroup_create(keys.STREAM, keys.GROUP, id="0")
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        worker = await asyncio.create_subprocess_exec(
            *WORKER_COMMAND, env=env, cwd=ROOT, stdout=log, stderr=asyncio.subprocess.STDOUT
        )
        try:
            while not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM notifications)"):
                elapsed = time.perf_counter() - started
                if worker.returncode is not None or elapsed > give_up_after:
                    log.seek(0)
                    sys.stderr.write(log.read().decode(errors="replace"))
                    raise RuntimeError(f"no row after {elapsed:.1f}s (worker exit code {worker.returncode})")
                await asyncio.sleep(POLL_SECONDS)
            return time.perf_counter() - started
        finally:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
            await asyncio.wait_for(worker.wait(), 60)


async def measure(database_url: str, redis_url: str, runs: int, per_request: int, give_up_after: float) -> list[float]:
    """Make sure the default service exists, then time `runs` worker starts; return their seconds."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "WORKER_METRICS_PORT": "0",
        "PYTHONPATH": str(ROOT),
    }
    conn = await asyncpg.connect(database_url)
    redis = Redis.from_url(redis_url)
    try:
        await conn.execute("INSERT INTO services VALUES ($1, 'default', now()) ON CONFLICT DO NOTHING", SERVICE_ID)
        seconds = []
        for run in range(1, runs + 1):
            seconds.append(await first_row_seconds(conn, redis, env, per_request, give_up_after))
            print(f"run {run}: {seconds[-1]:.3f} s to the first stored row", flush=True)
        return seconds
    finally:
        await redis.aclose()
        await conn.close()


def main() -> None:
    """Parse arguments, start servers if needed, time the worker starts, print and record."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--per-request", type=int, default=5, help="notifications in the one queued request")
    parser.add_argument("--give-up-after", type=float, default=30.0, help="seconds to wait for a row before failing")
    parser.add_argument("--label", default="")
    add_servers_flag(parser)
    args = parser.parse_args()

    with bench_servers(args.use_configured_servers) as (database_url, redis_url):
        seconds = asyncio.run(measure(database_url, redis_url, args.runs, args.per_request, args.give_up_after))
    row = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "label": args.label,
        "runs": args.runs,
        "per_request": args.per_request,
        "median_s": round(statistics.median(seconds), 3),
        "min_s": round(min(seconds), 3),
        "max_s": round(max(seconds), 3),
        "all_s": " ".join(f"{s:.3f}" for s in seconds),
    }
    print(f"median {row['median_s']} s, min {row['min_s']} s, max {row['max_s']} s over {args.runs} runs")
    append_csv(RESULTS, [row])


if __name__ == "__main__":
    main()
