"""`make bench-jobs`: a CSV job over HTTP beside the same rows sent as `/multiple(1000)`, in one run (issue 21).

One uvicorn API process and --drain-workers arq workers (as `make run`), on servers of the benchmark's own. The
same --rows personalised notifications (a template with `((name))` and `((band))`, the rows of
`loadtest.bench_jobs`) take two paths, one after the other, each on an empty `notifications` table:

- `job`: a CSV file written to disk before the clock starts, streamed (chunked) in ONE request to
  `POST /notifications/v1/jobs?template_id=…&name=…` (`Content-Type: text/csv`). The API COPYs the rows into
  Postgres in one transaction before its 201, so the seconds to the 201 are the seconds to every row stored. Also
  measured: the rows of that job in Postgres, and the API's RSS before the job and at its peak (the larger of a
  200 ms sampler's and the kernel's high-water mark since the process started, VmHWM: never understated, and
  overstated only if an earlier moment of the process, such as `/multiple` under --multiple-first, was higher).
- `/multiple(1000)`: the same rows as bodies of 1,000 items (each naming the template; built before the clock
  starts), --in-flight requests at a time to `POST /notifications/v1/multiple`; then the time until the worker(s)
  stored all of them (the stream empty, then the rows counted in Postgres): the drain's measured rate is the
  rows over the seconds from the first request to the last row stored.

A warm-up job and a warm-up `/multiple` request come first (their rows are thrown away); the job is measured before
`/multiple` unless --multiple-first (the machine's other load changes over a run: the order shows whether it
favoured one path). Goals (issue 21, item 5), each printed met / not met from the figures of the run:

1. the job accepted at >= 1.5x the notifications/s `/multiple(1000)` is accepted at;
2. every row of the job stored within 2x the time the drain, at its measured rate, takes for as many rows: the job's
   seconds to its 201 <= 2 x rows / the drain's rate (its rows stored at >= half the drain's rate);
3. the API's peak RSS during the job < its RSS before + 200 MB.

    .venv/bin/python -m loadtest.bench_jobs_http [--rows 1000000] [--in-flight 8] [--drain-workers 1]
        [--appendfsync always] [--multiple-first] [--label ...] [--use-configured-servers]

Prints a table and the goals, and appends a row to loadtest/results/jobs-http.csv. A measurement, not a test.
"""

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import orjson
import psutil
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from devstack.embedded import free_port
from loadtest.bench_jobs import IN_FLIGHT, PER_REQUEST, job_lines, multiple_items
from loadtest.bench_report import append_csv
from loadtest.measure import CpuMeter, RssSampler
from loadtest.servers import add_servers_flag, bench_servers
from loadtest.stack import BIN, DESIGNS, ROOT, spawn, sql, stop, wait_port
from shared import queries, tenancy
from shared.backlog import read_backlog
from shared.db import create_engine
from shared.secretbox import SecretBox, new_secret_key

RESULTS = ROOT / "loadtest" / "results"
JOBS_PATH = "/notifications/v1/jobs"
MULTIPLE_PATH = "/notifications/v1/multiple"
#: Bytes per chunk of the job's streamed body.
CHUNK_BYTES = 64 * 1024
WARM_UP_ROWS = 1000
#: The issue's goals: job accepted / `/multiple` accepted, job seconds / drain seconds, API memory growth.
GOAL_ACCEPTED_RATIO = 1.5
GOAL_STORED_TIME_RATIO = 2.0
GOAL_MEMORY_MB = 200
#: The processes a notification's path runs through, for CPU per notification.
PIPELINE = ("api", "worker", "postgres", "redis")
#: How long the drain may take to store what `/multiple` queued before the run gives up.
DRAIN_TIMEOUT_SECONDS = 900
#: How long one job request may take (from the first byte sent to the answer).
JOB_TIMEOUT_SECONDS = 1800


async def make_tenant(database_url: str, redis_url: str, secret_key: str) -> tuple[str, str, str]:
    """Create a service (a fresh name), an API key and an email template with `((name))` and `((band))`.

    Returns (service id, key, template id).
    """
    engine = create_engine(database_url, pool_size=1)
    redis = Redis.from_url(redis_url)
    service = await tenancy.create_service(engine, f"bench-jobs-{time.time_ns()}")
    key = await tenancy.create_api_key(engine, redis, SecretBox(secret_key), service.id, "bench")
    template_id = tenancy.new_id()
    async with engine.begin() as conn:
        await queries.insert_template(
            conn, template_id, service.id, "gig", "((band)) live", "Hi ((name)), ((band)) plays tonight.",
            tenancy.utc_now(),
        )  # fmt: skip
    await redis.aclose()
    await engine.dispose()
    return str(service.id), key.secret, str(template_id)


def _local_process(pid: int, name: str) -> psutil.Process | None:
    """The process `pid` of this machine if its name says it is `name` (a remote server's pid may be any process)."""
    try:
        process = psutil.Process(pid)
        return process if name in process.name() else None
    except psutil.Error:
        return None


async def server_pids(database_url: str, redis_url: str) -> dict[str, int]:
    """The pids of the Postgres postmaster and of redis-server, for CPU accounting (0 when not on this machine)."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            backend = _local_process(int(await conn.scalar(text("SELECT pg_backend_pid()"))), "postgres")
            postmaster = backend.ppid() if backend else 0
    finally:
        await engine.dispose()
    redis = Redis.from_url(redis_url)
    redis_server = _local_process(int((await redis.info("server")).get("process_id", 0)), "redis")
    await redis.aclose()
    return {"postgres": postmaster, "redis": redis_server.pid if redis_server else 0}


def write_job_csv(path: Path, rows: int) -> int:
    """Write the job's CSV (`loadtest.bench_jobs.job_lines`) to `path`; return its size in bytes."""
    with path.open("w", newline="") as out:
        out.writelines(f"{line}\r\n" for line in job_lines(rows))
    return path.stat().st_size


def multiple_bodies(rows: int, template_id: str) -> list[tuple[int, bytes]]:
    """The same rows as `/multiple` bodies of PER_REQUEST items naming the template: (items, body) each."""
    bodies = []
    for start in range(0, rows, PER_REQUEST):
        items = multiple_items(start, min(start + PER_REQUEST, rows))
        bodies.append((len(items), orjson.dumps([{**item, "template_id": template_id} for item in items])))
    return bodies


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    """The file's bytes, CHUNK_BYTES at a time: httpx sends an async iterator body chunked."""
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            yield chunk


def busy(before: Any) -> int:
    """CPU the whole machine (every process, ours or not) used since `before` (psutil.cpu_times()), % of one core."""
    after = psutil.cpu_times()
    total = sum(after) - sum(before)
    idle = (after.idle + after.iowait) - (before.idle + before.iowait)
    return int(100 * (os.cpu_count() or 1) * (total - idle) / max(total, 1e-9) + 0.5)


def vm_hwm(pid: int) -> int:
    """The process's peak resident set size since it started (VmHWM, /proc/<pid>/status), in bytes; 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def post_job(base_url: str, key: str, template_id: str, path: Path, name: str) -> dict[str, Any]:
    """POST the CSV file as one streamed job; return the 201's body (any other answer raises)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=JOB_TIMEOUT_SECONDS) as client:
        response = await client.post(
            JOBS_PATH,
            params={"template_id": template_id, "name": name},
            headers={"Authorization": f"Bearer {key}", "Content-Type": "text/csv"},
            content=file_chunks(path),
        )
    if response.status_code != 201:
        raise RuntimeError(f"the job was answered {response.status_code}: {response.text[:2000]}")
    answer: dict[str, Any] = response.json()
    return answer


async def post_multiple(base_url: str, key: str, bodies: list[tuple[int, bytes]], in_flight: int) -> int:
    """Send the bodies, `in_flight` requests at a time; return the notifications accepted (any non-201 raises)."""
    accepted = 0
    pending: Iterator[tuple[int, bytes]] = iter(bodies)
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=300, limits=limits) as client:

        async def sender() -> None:
            nonlocal accepted
            for items, body in pending:  # one iterator shared by the senders: each body is sent once
                response = await client.post(MULTIPLE_PATH, content=body)
                if response.status_code != 201:
                    raise RuntimeError(f"/multiple was answered {response.status_code}: {response.text[:2000]}")
                accepted += items

        await asyncio.gather(*(sender() for _ in range(in_flight)))
    return accepted


async def count_stored(database_url: str, job_id: str | None = None) -> int:
    """Notifications in Postgres: the job's, or all of them."""
    if job_id is None:
        return int((await sql(database_url, "SELECT count(*) FROM notifications"))[0][0])
    query = "SELECT count(*) FROM notifications WHERE job_id = :j"
    return int((await sql(database_url, query, j=UUID(job_id)))[0][0])


async def wait_stored(database_url: str, redis_url: str, total: int) -> float:
    """Wait until `total` notifications are in Postgres; return time.monotonic() of the poll that saw them.

    The stream is polled every 0.1 s (cheap); Postgres is counted once it is empty (a count of a million rows
    costs Postgres CPU the drain wants).
    """
    redis = Redis.from_url(redis_url)
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    try:
        while time.monotonic() < deadline:
            if not (await read_backlog(redis)).entries and await count_stored(database_url) >= total:
                return time.monotonic()
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
    raise RuntimeError(f"not all {total} notifications stored within {DRAIN_TIMEOUT_SECONDS} s")


async def empty_tables(database_url: str) -> None:
    """Truncate the notifications and make Postgres write its dirty pages now, not during the next measurement."""
    await sql(database_url, "TRUNCATE notifications")
    try:
        await sql(database_url, "CHECKPOINT")
    except DBAPIError as error:  # a configured server's role may not be allowed to: measure anyway
        print(f"no CHECKPOINT between the runs ({error.__class__.__name__})", flush=True)


class Measuring:
    """One path's measurement, started at once: the API's memory (before, sampled peak) and every process's CPU."""

    def __init__(self, api_pid: int, cpu_pids: dict[str, int]) -> None:
        self.rss_before = psutil.Process(api_pid).memory_info().rss
        self.sampler = RssSampler({"api": api_pid})
        self.sampler.start()
        self.meter = CpuMeter(cpu_pids)
        self.meter.start()
        self.machine, self.bench_cpu, self.started = psutil.cpu_times(), time.process_time(), time.monotonic()

    def stop(self) -> tuple[float, dict[str, float]]:
        """Stop; return the seconds measured and the CPU of each process, this one's and the machine's (%)."""
        seconds = time.monotonic() - self.started
        cpu = {
            **self.meter.stop(),
            "bench": round(100 * (time.process_time() - self.bench_cpu) / seconds),
            "machine": busy(self.machine),
        }
        del cpu["load"]  # CpuMeter's finished children of this process: none here
        self.sampler.running = False
        self.sampler.join()
        return seconds, cpu


def measure_job(
    base_url: str, key: str, template_id: str, csv_path: Path, api_pid: int, cpu_pids: dict[str, int], database_url: str
) -> dict[str, Any]:
    """POST the job once; return its figures (seconds, rate, rows in Postgres, API memory, CPU)."""
    measuring = Measuring(api_pid, cpu_pids)
    answer = asyncio.run(post_job(base_url, key, template_id, csv_path, f"bench-{time.time_ns()}"))
    seconds, cpu = measuring.stop()
    return {
        "answer": answer,
        "seconds": seconds,
        "stored": asyncio.run(count_stored(database_url, str(answer["id"]))),
        "stored_seconds": seconds,  # the 201 comes after the commit: every row is stored when it is answered
        "api_rss_before_mb": measuring.rss_before / 2**20,
        "api_rss_peak_mb": max(measuring.sampler.peak["api"], vm_hwm(api_pid)) / 2**20,
        "cpu": cpu,
    }


def measure_multiple(
    base_url: str, key: str, bodies: list[tuple[int, bytes]], in_flight: int, api_pid: int, cpu_pids: dict[str, int],
    database_url: str, redis_url: str,
) -> dict[str, Any]:  # fmt: skip
    """Send the `/multiple` bodies, wait until the drain stored them all; return the figures."""
    measuring = Measuring(api_pid, cpu_pids)
    started = measuring.started
    accepted = asyncio.run(post_multiple(base_url, key, bodies, in_flight))
    seconds, cpu = measuring.stop()
    meter = measuring.meter
    meter.start()
    tail_started = time.monotonic()
    stored_then = asyncio.run(count_stored(database_url))
    stored_at = asyncio.run(wait_stored(database_url, redis_url, accepted))
    tail_cpu = meter.stop()
    return {
        "accepted": accepted,
        "seconds": seconds,
        "stored": asyncio.run(count_stored(database_url)),
        "stored_seconds": stored_at - started,
        "stored_at_accept_end": stored_then,
        "tail_seconds": stored_at - tail_started,
        "api_rss_before_mb": measuring.rss_before / 2**20,
        "api_rss_peak_mb": measuring.sampler.peak["api"] / 2**20,
        "cpu": cpu,
        "tail_cpu": tail_cpu,
    }


def warm_up(base_url: str, key: str, template_id: str, tmp: Path, database_url: str, redis_url: str) -> None:
    """One small job and one `/multiple` request (connections, caches, the day's partition), then empty tables."""
    path = tmp / "warm-up.csv"
    write_job_csv(path, WARM_UP_ROWS)
    asyncio.run(post_job(base_url, key, template_id, path, "warm-up"))
    accepted = asyncio.run(post_multiple(base_url, key, multiple_bodies(WARM_UP_ROWS, template_id), 1))
    asyncio.run(wait_stored(database_url, redis_url, accepted + WARM_UP_ROWS))
    asyncio.run(empty_tables(database_url))


def cpu_cells(cpu: dict[str, int]) -> str:
    """CPU % of one core: API / workers / Postgres / Redis / the bench's own process (the whole machine)."""
    workers = sum(v for k, v in cpu.items() if k.startswith("worker"))
    return f"{cpu['api']} / {workers} / {cpu['postgres']} / {cpu['redis']} / {cpu['bench']} ({cpu['machine']})"


def cpu_us(cpu: dict[str, int], seconds: float, notifications: int, names: tuple[str, ...]) -> float:
    """CPU microseconds per notification of the named processes (`worker` names every worker), from CPU %."""
    percent = sum(v for k, v in cpu.items() if k in names or ("worker" in names and k.startswith("worker")))
    return percent / 100 * seconds / max(notifications, 1) * 1e6


def verdict(met: bool) -> str:
    """The goal's column."""
    return "**met**" if met else "**not met**"


def report(
    rows: int, job: dict[str, Any], multiple: dict[str, Any], args: argparse.Namespace, load: tuple[float, float]
) -> dict[str, Any]:
    """Print the side-by-side table and the goals; return the CSV row (`load`: 1-minute load average before, after)."""
    job_rate = rows / job["seconds"]
    multiple_rate = multiple["accepted"] / multiple["seconds"]
    drain_rate = multiple["accepted"] / multiple["stored_seconds"]
    tail_rate = (multiple["accepted"] - multiple["stored_at_accept_end"]) / max(multiple["tail_seconds"], 1e-9)
    drain_seconds_for_job = rows / drain_rate
    growth = job["api_rss_peak_mb"] - job["api_rss_before_mb"]
    goals = {
        "accepted": job_rate >= GOAL_ACCEPTED_RATIO * multiple_rate,
        "stored": job["stored"] == rows and job["stored_seconds"] <= GOAL_STORED_TIME_RATIO * drain_seconds_for_job,
        "memory": growth < GOAL_MEMORY_MB,
    }
    print(
        f"\n`python -m loadtest.bench_jobs_http --rows {rows} --in-flight {args.in_flight} --drain-workers "
        f"{args.drain_workers} --appendfsync {args.appendfsync}{' --multiple-first' if args.multiple_first else ''}`"
        f" — 1 API process, {args.drain_workers} drain "
        f"worker(s), {os.cpu_count()} cores (load average {load[0]:.1f} before the run, {load[1]:.1f} after); CPU "
        "in % of one core over each path's seconds to accepted; machine: every process on it, ours or not.\n"
    )
    print(
        "| path | notifications | requests | s to accepted | accepted notif/s | s to all stored | stored notif/s "
        "| rows in Postgres | API RSS MB before → peak | CPU % API / workers / PG / Redis / bench (machine) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| job (CSV, streamed, status `{job['answer'].get('status')}`) | {rows:,} | 1 | {job['seconds']:.1f} "
        f"| {job_rate:,.0f} | {job['stored_seconds']:.1f} | {job['stored'] / job['stored_seconds']:,.0f} "
        f"| {job['stored']:,} | {job['api_rss_before_mb']:.0f} → {job['api_rss_peak_mb']:.0f} "
        f"| {cpu_cells(job['cpu'])} |"
    )
    print(
        f"| `/multiple({PER_REQUEST})`, {args.in_flight} in flight | {multiple['accepted']:,} "
        f"| {-(-multiple['accepted'] // PER_REQUEST):,} | {multiple['seconds']:.1f} | {multiple_rate:,.0f} "
        f"| {multiple['stored_seconds']:.1f} | {drain_rate:,.0f} | {multiple['stored']:,} "
        f"| {multiple['api_rss_before_mb']:.0f} → {multiple['api_rss_peak_mb']:.0f} | {cpu_cells(multiple['cpu'])} |"
    )
    tail_cpu, left = multiple["tail_cpu"], multiple["accepted"] - multiple["stored_at_accept_end"]
    print(
        f"\nAfter the last `/multiple` 201, {left:,} notifications were still in Redis; the drain stored them in "
        f"{multiple['tail_seconds']:.1f} s ({tail_rate:,.0f}/s; CPU % workers / PG / Redis: "
        f"{sum(v for k, v in tail_cpu.items() if k.startswith('worker'))} / {tail_cpu['postgres']} / "
        f"{tail_cpu['redis']}).\n"
        if left
        else "\nThe drain had stored every `/multiple` notification by the last 201.\n"
    )
    us = {
        "job_api": cpu_us(job["cpu"], job["seconds"], rows, ("api",)),
        "job_pipeline": cpu_us(job["cpu"], job["seconds"], rows, PIPELINE),
        "multiple_api": cpu_us(multiple["cpu"], multiple["seconds"], multiple["accepted"], ("api",)),
        "multiple_pipeline": cpu_us(multiple["cpu"], multiple["seconds"], multiple["accepted"], PIPELINE)
        + cpu_us(multiple["tail_cpu"], multiple["tail_seconds"], multiple["accepted"], PIPELINE),
    }
    print(
        f"CPU per notification (less sensitive to the machine's other load than rates): the API "
        f"{us['job_api']:.1f} µs in the job, {us['multiple_api']:.1f} µs in `/multiple`; the API, workers, Postgres "
        f"and Redis together {us['job_pipeline']:.1f} µs in the job, {us['multiple_pipeline']:.1f} µs in `/multiple` "
        f"until stored ({us['multiple_pipeline'] / max(us['job_pipeline'], 1e-9):.2f}x).\n"
    )
    print("| goal (issue 21, item 5) | measured | |")
    print("|---|---|---|")
    print(
        f"| job accepted >= {GOAL_ACCEPTED_RATIO}x `/multiple({PER_REQUEST})`'s notifications/s "
        f"| {job_rate / multiple_rate:.2f}x ({job_rate:,.0f} vs {multiple_rate:,.0f}/s) "
        f"| {verdict(goals['accepted'])} |"
    )
    print(
        f"| every job row stored within {GOAL_STORED_TIME_RATIO:g}x the drain's time for as many rows "
        f"| {job['stored']:,} of {rows:,} rows in {job['stored_seconds']:.1f} s; the drain's measured "
        f"{drain_rate:,.0f}/s takes {drain_seconds_for_job:.1f} s for them "
        f"({job['stored_seconds'] / drain_seconds_for_job:.2f}x) | {verdict(goals['stored'])} |"
    )
    print(
        f"| API memory during the job + < {GOAL_MEMORY_MB} MB | +{growth:.0f} MB "
        f"({job['api_rss_before_mb']:.0f} → {job['api_rss_peak_mb']:.0f}) | {verdict(goals['memory'])} |"
    )
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "label": args.label,
        "rows": rows,
        "in_flight": args.in_flight,
        "drain_workers": args.drain_workers,
        "appendfsync": args.appendfsync,
        "order": "multiple first" if args.multiple_first else "job first",
        "csv_mb": round(args.csv_bytes / 2**20, 1),
        "load_before": round(load[0], 2),
        "load_after": round(load[1], 2),
        "job_seconds": round(job["seconds"], 2),
        "job_accepted_per_s": round(job_rate),
        "job_status": job["answer"].get("status"),
        "job_rows_stored": job["stored"],
        "job_api_rss_before_mb": round(job["api_rss_before_mb"], 1),
        "job_api_rss_peak_mb": round(job["api_rss_peak_mb"], 1),
        **{f"job_cpu_{name}": value for name, value in job["cpu"].items()},
        "multiple_accepted": multiple["accepted"],
        "multiple_seconds": round(multiple["seconds"], 2),
        "multiple_accepted_per_s": round(multiple_rate),
        "multiple_stored_seconds": round(multiple["stored_seconds"], 2),
        "drain_per_s": round(drain_rate),
        "drain_tail_per_s": round(tail_rate),
        "multiple_rows_stored": multiple["stored"],
        "multiple_api_rss_peak_mb": round(multiple["api_rss_peak_mb"], 1),
        **{f"multiple_cpu_{name}": value for name, value in multiple["cpu"].items()},
        **{f"{name}_cpu_us_per_notification": round(value, 2) for name, value in us.items()},
        "accepted_ratio": round(job_rate / multiple_rate, 2),
        "stored_time_ratio": round(job["stored_seconds"] / drain_seconds_for_job, 2),
        "api_rss_growth_mb": round(growth, 1),
        **{f"goal_{name}_met": met for name, met in goals.items()},
    }


def main() -> None:
    """Start the servers, the API and the worker(s); measure the job, then `/multiple`; print and record."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="notifications each path carries")
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT, help="concurrent `/multiple` requests")
    parser.add_argument("--drain-workers", type=int, default=1, help="arq worker processes")
    parser.add_argument("--appendfsync", default="always", choices=["always", "everysec", "no"])
    parser.add_argument(
        "--multiple-first", action="store_true", help="measure `/multiple` before the job (default: the job first)"
    )
    parser.add_argument("--label", default="")
    add_servers_flag(parser)
    args = parser.parse_args()

    with (
        bench_servers(args.use_configured_servers, appendfsync=args.appendfsync) as (database_url, redis_url),
        tempfile.TemporaryDirectory() as folder,
    ):
        tmp = Path(folder)
        load_before = os.getloadavg()[0]
        secret_key = new_secret_key()
        _, key, template_id = asyncio.run(make_tenant(database_url, redis_url, secret_key))
        csv_path = tmp / "job.csv"
        args.csv_bytes = write_job_csv(csv_path, args.rows)
        bodies = multiple_bodies(args.rows, template_id)
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SECRET_KEY": secret_key,
            "ACCESS_LOG": "false",
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
            "WORKER_METRICS_PORT": "0",
        }
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        api = spawn(
            [str(BIN / "uvicorn"), DESIGNS["service"], "--port", str(port), "--no-access-log", "--log-level",
             "warning"],
            env,
            tmp / "api.log",
        )  # fmt: skip
        workers = [
            spawn([str(BIN / "arq"), "worker.main.WorkerSettings"], env, tmp / f"worker{n}.log")
            for n in range(args.drain_workers)
        ]
        try:
            wait_port(port)
            cpu_pids = {
                "api": api.pid,
                **{f"worker{n}": w.pid for n, w in enumerate(workers)},
                **asyncio.run(server_pids(database_url, redis_url)),
            }
            warm_up(base_url, key, template_id, tmp, database_url, redis_url)
            figures: dict[str, dict[str, Any]] = {}
            for path in ("multiple", "job") if args.multiple_first else ("job", "multiple"):
                if path == "job":
                    print(f"job: {args.rows:,} rows, {args.csv_bytes / 2**20:.1f} MB of CSV, streamed", flush=True)
                    figures[path] = measure_job(base_url, key, template_id, csv_path, api.pid, cpu_pids, database_url)
                    print(f"job answered in {figures[path]['seconds']:.1f} s: {figures[path]['answer']}", flush=True)
                else:
                    print(f"/multiple({PER_REQUEST}): {len(bodies):,} requests, {args.in_flight} in flight", flush=True)
                    figures[path] = measure_multiple(
                        base_url, key, bodies, args.in_flight, api.pid, cpu_pids, database_url, redis_url
                    )
                asyncio.run(empty_tables(database_url))
            job, multiple = figures["job"], figures["multiple"]
            load_after = os.getloadavg()[0]
        except Exception:
            for log in sorted(tmp.glob("*.log")):
                print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text().splitlines()[-30:]), flush=True)
            raise
        finally:
            stop(api)
            for worker in workers:
                stop(worker)
    row = report(args.rows, job, multiple, args, (load_before, load_after))
    RESULTS.mkdir(parents=True, exist_ok=True)
    append_csv(RESULTS / "jobs-http.csv", [row])


if __name__ == "__main__":
    main()
