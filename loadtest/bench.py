"""`make bench`: the service against two baselines, in one run, on this machine, under the same load.

Designs (one uvicorn worker each): `service` (this project), `naive` (typed FastAPI body, a redis-py pipeline
per request: loadtest/baselines/naive.py) and `direct` (each POST inserts into Postgres before answering:
loadtest/baselines/direct.py). The write-behind designs are drained by one of our arq workers.

For single POSTs, multiple(100) and (the service only) single POSTs each with its own Idempotency-Key
(`single-keyed`) and GOV.UK Notify's email send (`v2-email`: `POST /v2/notifications/email` with the bench's email
template and a Notify JWT signed as the run starts, valid for its 30 s) it reports accepted notifications/s and
latency p50/p99 (wrk, 50 connections, for --seconds), stored notifications/s (rows in Postgres from the start of the
load until the backlog is drained) and persistence lag p50/p99 (POST answered → row committed, read from Postgres's
commit timestamps). Then, for the service: the lag at half its measured maximum sustained rate (fixed-rate load;
also at half its burst rate when it accepts faster than it stores, see `maximum_rates`), RSS of API and worker under
load, and Redis bytes per pending notification. Last, the service's sustained rate (loadtest/sustained.py): the
highest multiple(100) rate it both accepts and stores with a flat backlog over --sustained-seconds, for each
--sustained-configs (API processes x drain workers; `make run` runs 1x1), with the CPU of each process (API,
workers, Redis, Postgres, load generator) to show which one is the limit.

    .venv/bin/python -m loadtest.bench [--seconds 10] [--pg-delay-ms 2] [--appendfsync always]
        [--sustained-seconds 60] [--probe-seconds 15] [--sustained-configs 1x1,1x2,2x2]
        [--skip-sustained | --only-sustained] [--label ...]

Writes loadtest/results/bench.csv and sustained.csv (appended), bench[-<label>].md and bench[-<label>].png.
"""

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from devstack.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from loadtest.bench_report import append_csv, markdown, plot_bars, plot_timelines, sustained_markdown
from loadtest.loadgen import run_fixed_rate
from loadtest.measure import CpuMeter, RssSampler, Timeline, wrk
from loadtest.stack import (
    BIN,
    DESIGNS,
    DRAINED,
    KEYED,
    MODES,
    MULTIPLE,
    ROOT,
    SERVICE_ONLY,
    V2_EMAIL,
    Stack,
    count_rows,
    make_tenant,
    notify_token,
    persistence_lag,
    reset,
    spawn,
    stop,
    template_of,
    v2_email_body,
    wait_port,
)
from loadtest.sustained import find_sustained, parse_configs
from shared.db import upgrade_database
from shared.secretbox import new_secret_key
from shared.settings import Settings

RESULTS = ROOT / "loadtest" / "results"
#: The sustained rate is measured for these (API processes x drain workers): `make run`'s default first.
SUSTAINED_CONFIGS = "1x1,1x2,2x2"
#: Length of the saturating run that gives the sustained-rate search its first estimate.
ESTIMATE_SECONDS = 5


def run_design(
    design: str, mode: str, stack: Stack, seconds: int, tmp: Path, api_workers: int = 1, drain_workers: int = 1
) -> dict[str, Any]:
    """Load one design with one kind of request; return the figures."""
    path, body, per_request = MODES[mode]
    key = stack.api_key
    if mode == V2_EMAIL:
        body = v2_email_body(stack.template_id)
    asyncio.run(reset(stack))
    port = free_port()
    api = spawn(
        [str(BIN / "uvicorn"), DESIGNS[design], "--port", str(port), "--no-access-log", "--log-level", "warning",
         "--workers", str(api_workers)],
        stack.env,
        tmp / f"{design}-api.log",
    )  # fmt: skip
    workers = [
        spawn([str(BIN / "arq"), "worker.main.WorkerSettings"], stack.env, tmp / f"{design}-worker.log")
        for _ in range(drain_workers if design in DRAINED else 0)
    ]
    worker = workers[0] if workers else None
    try:
        wait_port(port)
        time.sleep(1.0 + api_workers)
        sampler = RssSampler({"api": api.pid, **({"worker": worker.pid} if worker else {})})
        sampler.start()
        # naive entries hold one notification each, ours a whole request
        timeline = Timeline(stack.database_url, stack.redis_url, 1 if design == "naive" else per_request)
        timeline.start()
        cpu = CpuMeter({"api": api.pid, **{f"worker{n}": w.pid for n, w in enumerate(workers)}, **stack.server_pids})
        cpu.start()
        started = time.monotonic()
        if mode == V2_EMAIL:
            key = notify_token(stack.api_key)  # signed now, valid for 30 s: as a client re-signing each second
        load = wrk(port, path, body, key, seconds, tmp, keyed=mode in KEYED)
        used = cpu.stop()
        accepted = int(load["ok"]) * per_request
        deadline = time.monotonic() + 120
        while (stored := asyncio.run(count_rows(stack))) < accepted and time.monotonic() < deadline:
            time.sleep(0.2)
        drained = time.monotonic()
        sampler.running = timeline.running = False
        timeline.join()
        lag_p50, lag_p99 = asyncio.run(persistence_lag(stack))
    finally:
        stop(api)
        for process in workers:
            stop(process)
    return {
        "design": design,
        "mode": mode,
        "api_workers": api_workers,
        "drain_workers": drain_workers if workers else 0,
        "accepted_per_s": round(load["rps"] * per_request * load["ok"] / max(load["requests"], 1)),
        "requests_per_s": round(load["rps"]),
        "p50_ms": round(load["p50"] * 1000, 2),
        "p99_ms": round(load["p99"] * 1000, 2),
        "stored": stored,
        "accepted": accepted,
        "stored_per_s": round(stored / (drained - started)),
        "lag_p50_ms": round(lag_p50 * 1000, 1),
        "lag_p99_ms": round(lag_p99 * 1000, 1),
        "api_rss_mb": round(sampler.peak["api"] / 2**20, 1),
        "worker_rss_mb": round(sampler.peak.get("worker", 0) / 2**20, 1),
        "cpu_api": used["api"],
        "cpu_workers": sum(v for k, v in used.items() if k.startswith("worker")),
        "cpu_redis": used["redis"],
        "cpu_postgres": used["postgres"],
        "cpu_load": used["load"],
        "timeline": timeline.samples,
    }


def maximum_rates(row: dict[str, Any]) -> list[tuple[str, float]]:
    """The service's maximum request rates of a run: sustained (accepted and stored), and the burst if higher.

    Write-behind accepts faster than it stores for a while: a rate above what the drain stores is not sustained
    (the backlog grows until MAX_BACKLOG_ENTRIES refuses writes). The lag target is about the sustained rate;
    the lag at half the burst rate is measured too, when the two differ by more than 5 %.
    """
    per_request = row["accepted_per_s"] / max(row["requests_per_s"], 1)
    sustained = min(row["requests_per_s"], row["stored_per_s"] / per_request)
    rates = [("sustained", sustained)]
    if row["requests_per_s"] > 1.05 * sustained:
        rates.append(("accepted (burst)", row["requests_per_s"]))
    return rates


def half_load_lag(stack: Stack, mode: str, max_rps: float, seconds: int, tmp: Path) -> dict[str, Any]:
    """The service at half its measured maximum request rate: persistence lag p50/p99."""
    path, body, per_request = MODES[mode]
    asyncio.run(reset(stack))
    port = free_port()
    api = spawn(
        [str(BIN / "uvicorn"), DESIGNS["service"], "--port", str(port), "--no-access-log"],
        stack.env,
        tmp / "half-api.log",
    )
    worker = spawn([str(BIN / "arq"), "worker.main.WorkerSettings"], stack.env, tmp / "half-worker.log")
    try:
        wait_port(port)
        time.sleep(1.0)
        rate = max_rps / 2
        result = asyncio.run(
            run_fixed_rate("127.0.0.1", port, path, body, {"Authorization": f"Bearer {stack.api_key}"}, rate, seconds)
        )
        deadline = time.monotonic() + 60
        while asyncio.run(count_rows(stack)) < result.ok * per_request and time.monotonic() < deadline:
            time.sleep(0.2)
        lag_p50, lag_p99 = asyncio.run(persistence_lag(stack))
    finally:
        stop(api)
        stop(worker)
    return {
        "mode": mode,
        "rate_rps": round(rate),
        "sent": result.sent,
        "ok": result.ok,
        "http_p50_ms": round(result.percentile(50) * 1000, 2),
        "http_p99_ms": round(result.percentile(99) * 1000, 2),
        "lag_p50_ms": round(lag_p50 * 1000, 1),
        "lag_p99_ms": round(lag_p99 * 1000, 1),
    }


async def redis_bytes_per_pending(stack: Stack, port: int, count: int = 20_000) -> float:
    """Redis memory per notification waiting in the stream (with its cache key), no worker running."""
    redis = Redis.from_url(stack.redis_url)
    await redis.delete("notify:stream")
    before = int((await redis.info("memory"))["used_memory"])
    result = await run_fixed_rate(
        "127.0.0.1", port, "/notifications/v1/multiple", MULTIPLE, {"Authorization": f"Bearer {stack.api_key}"},
        rate=200, seconds=count / 100 / 200,
    )  # fmt: skip
    after = int((await redis.info("memory"))["used_memory"])
    await redis.aclose()
    return (after - before) / max(result.ok * 100, 1)


def memory_figures(stack: Stack, tmp: Path) -> float:
    """Start the service API alone and measure Redis bytes per pending notification."""
    asyncio.run(reset(stack))
    port = free_port()
    api = spawn([str(BIN / "uvicorn"), DESIGNS["service"], "--port", str(port)], stack.env, tmp / "mem-api.log")
    try:
        wait_port(port)
        time.sleep(1.0)
        return asyncio.run(redis_bytes_per_pending(stack, port))
    finally:
        stop(api)


def sustained_rates(
    stack: Stack, tmp: Path, rows: list[dict[str, Any]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The service's sustained multiple(100) rate per configuration (loadtest/sustained.py), each with its figures.

    The search starts from the stored rate of a saturating run: this run's service/multiple row when its
    configuration matches, else a wrk run of ESTIMATE_SECONDS.
    """
    found = []
    for api_workers, drain_workers in parse_configs(args.sustained_configs):
        config = ("service", "multiple", api_workers, drain_workers)
        known = [r for r in rows if (r["design"], r["mode"], r["api_workers"], r["drain_workers"]) == config]
        if not known:
            known = [run_design("service", "multiple", stack, ESTIMATE_SECONDS, tmp, api_workers, drain_workers)]
        stored = known[0]["stored_per_s"]
        print(f"{api_workers}x{drain_workers} saturated: {stored} notifications/s stored", flush=True)
        estimate = stored // MODES["multiple"][2]
        found.append(
            find_sustained(stack, tmp, api_workers, drain_workers, estimate, args.sustained_seconds, args.probe_seconds)
        )
        print(found[-1], flush=True)
    return found


def main() -> None:
    """Start the servers, measure every design, write the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--pg-delay-ms", type=float, default=0.0, help="latency added to every Postgres round trip")
    parser.add_argument("--appendfsync", default="always", choices=["always", "everysec", "no"])
    parser.add_argument("--designs", default="service,naive,direct")
    parser.add_argument("--modes", default="single,multiple,single-keyed,v2-email")
    parser.add_argument("--skip-extras", action="store_true", help="no half-load lag and memory runs")
    parser.add_argument("--label", default="")
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--drain-workers", type=int, default=1, help="arq worker processes")
    parser.add_argument("--drain-batch", type=int, default=0, help="DRAIN_BATCH_ENTRIES (0: the default)")
    parser.add_argument("--drain-linger", type=int, default=None, help="DRAIN_LINGER_MS (default: the setting's)")
    parser.add_argument("--sustained-seconds", type=int, default=60, help="window confirming a sustained rate")
    parser.add_argument("--probe-seconds", type=int, default=15, help="window of the sustained-rate search's probes")
    parser.add_argument(
        "--sustained-configs", default=SUSTAINED_CONFIGS, help="sustained rate of: <API processes>x<drain workers>,..."
    )
    parser.add_argument("--skip-sustained", action="store_true", help="no sustained-rate search")
    parser.add_argument("--only-sustained", action="store_true", help="only the sustained-rate search")
    args = parser.parse_args()
    parse_configs(args.sustained_configs)  # fail now rather than after the other runs
    if args.only_sustained:
        args.modes, args.skip_extras, args.skip_sustained = "", True, False
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk (make bench installs it)")

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        pg = EmbeddedPostgres(tmp / "pg", free_port(), {"track_commit_timestamp": "on", "max_wal_size": "4GB"}).start()
        redis_server = EmbeddedRedis(tmp / "redis", free_port(), appendfsync=args.appendfsync).start()
        proxy = None
        try:
            upgrade_database(pg.url)
            secret_key = new_secret_key()
            service_id, api_key = asyncio.run(make_tenant(pg.url, redis_server.url, secret_key))
            database_url = pg.url
            if args.pg_delay_ms:
                proxy_port = free_port()
                proxy = subprocess.Popen(
                    [sys.executable, "-m", "loadtest.pgproxy", "--listen", str(proxy_port),
                     "--target", f"127.0.0.1:{pg.port}", "--delay-ms", str(args.pg_delay_ms)],
                    cwd=ROOT,
                )  # fmt: skip
                wait_port(proxy_port)
                database_url = f"postgresql://postgres@127.0.0.1:{proxy_port}/postgres"
            env = {
                **os.environ,
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_server.url,
                "BENCH_API_KEY": api_key,
                "BENCH_SERVICE_ID": service_id,
                "SECRET_KEY": secret_key,
                "ACCESS_LOG": "false",
                "LOG_LEVEL": "WARNING",
                "PYTHONPATH": str(ROOT),
                "WORKER_METRICS_PORT": "0",
                **({"DRAIN_BATCH_ENTRIES": str(args.drain_batch)} if args.drain_batch else {}),
                **({"DRAIN_LINGER_MS": str(args.drain_linger)} if args.drain_linger is not None else {}),
            }
            pids = {"redis": redis_server.process.pid if redis_server.process else 0, "postgres": pg.pid}
            template_id = asyncio.run(template_of(pg.url, service_id))
            stack = Stack(pg.url, redis_server.url, api_key, service_id, env, pids, template_id)
            rows = []
            for mode in filter(None, args.modes.split(",")):
                for design in filter(None, args.designs.split(",")):
                    if mode in SERVICE_ONLY and design != "service":
                        continue
                    row = run_design(design, mode, stack, args.seconds, tmp, args.api_workers, args.drain_workers)
                    print({k: v for k, v in row.items() if k != "timeline"}, flush=True)
                    rows.append(row)
            half: list[dict[str, Any]] = []
            bytes_per = 0.0
            if not args.skip_extras:
                for row in rows:
                    if row["design"] == "service" and row["mode"] not in SERVICE_ONLY:
                        for of, max_rps in maximum_rates(row):
                            half.append({"of": of, **half_load_lag(stack, row["mode"], max_rps, args.seconds, tmp)})
                            print(half[-1], flush=True)
                bytes_per = memory_figures(stack, tmp)
            sustained = [] if args.skip_sustained else sustained_rates(stack, tmp, rows, args)
        finally:
            if proxy:
                proxy.terminate()
            redis_server.stop()
            pg.stop()

    label = f"-{args.label}" if args.label else ""
    when = datetime.now(UTC).isoformat(timespec="seconds")
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = (markdown(rows, half, bytes_per, args) if rows else "") + (
        sustained_markdown(sustained, args) if sustained else ""
    )
    (RESULTS / f"bench{label}.md").write_text(report)
    settings = {
        "when": when,
        "label": args.label,
        "pg_delay_ms": args.pg_delay_ms,
        "appendfsync": args.appendfsync,
        "drain_batch": args.drain_batch or Settings.model_fields["drain_batch_entries"].default,
        "drain_linger_ms": Settings.model_fields["drain_linger_ms"].default
        if args.drain_linger is None
        else args.drain_linger,
    }
    if rows:
        title = f"pg delay {args.pg_delay_ms} ms, appendfsync {args.appendfsync}"
        plot_bars(rows, RESULTS / f"bench{label}.png", title)
        plot_timelines(rows, RESULTS / f"bench{label}-timeline.png", title)
        append_csv(
            RESULTS / "bench.csv", [{**settings, **{k: v for k, v in r.items() if k != "timeline"}} for r in rows]
        )
    if sustained:
        append_csv(RESULTS / "sustained.csv", [{**settings, **r} for r in sustained])
    print(report)


if __name__ == "__main__":
    main()
