"""`make bench`: the service against two baselines, in one run, on this machine, under the same load.

Designs (one uvicorn worker each): `service` (this project), `naive` (typed FastAPI body, a redis-py pipeline
per request: loadtest/baselines/naive.py) and `direct` (each POST inserts into Postgres before answering:
loadtest/baselines/direct.py). The write-behind designs are drained by one of our arq workers.

For single POSTs and for multiple(100) it reports accepted notifications/s and latency p50/p99 (wrk, 50
connections, for --seconds), stored notifications/s (rows in Postgres from the start of the load until the
backlog is drained) and persistence lag p50/p99 (POST answered → row committed, read from Postgres's commit
timestamps). Then, for the service: the lag at half its measured maximum rate (fixed-rate load), RSS of API and
worker under load, and Redis bytes per pending notification.

    .venv/bin/python -m loadtest.bench [--seconds 10] [--pg-delay-ms 2] [--appendfsync always]

Writes loadtest/results/bench.csv (appended), bench[-<label>].md and bench[-<label>].png.
"""

import argparse
import asyncio
import csv
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
from redis.asyncio import Redis
from sqlalchemy import text

from loadtest.loadgen import run_fixed_rate
from shared import tenancy
from shared.db import create_engine, upgrade_database
from shared.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtest" / "results"
BIN = Path(sys.executable).parent
DESIGNS = {
    "service": "api.main:app",
    "naive": "loadtest.baselines.naive:app",
    "direct": "loadtest.baselines.direct:app",
}
DRAINED = {"service", "naive"}
SINGLE = orjson.dumps({"to": "example@gmail.com", "personalization": {"band": "Incubus"}})
MULTIPLE = orjson.dumps([{"to": f"user{i}@example.com", "personalization": {"band": "Incubus"}} for i in range(100)])
MODES = {"single": ("/notifications/v1/", SINGLE, 1), "multiple": ("/notifications/v1/multiple", MULTIPLE, 100)}


@dataclass
class Stack:
    """The servers of one benchmark run."""

    database_url: str
    redis_url: str
    api_key: str
    service_id: str
    env: dict[str, str]


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


async def _sql(url: str, query: str, **params: Any) -> list[Any]:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(query), params)
            return list(result) if result.returns_rows else []
    finally:
        await engine.dispose()


async def _make_tenant(database_url: str, redis_url: str) -> tuple[str, str]:
    engine = create_engine(database_url, pool_size=1)
    redis = Redis.from_url(redis_url)
    service = await tenancy.create_service(engine, "bench")
    key = await tenancy.create_api_key(engine, redis, service.id, "bench")
    await redis.aclose()
    await engine.dispose()
    return str(service.id), key.secret


async def _reset(stack: Stack) -> None:
    await _sql(stack.database_url, "TRUNCATE notifications CASCADE")
    redis = Redis.from_url(stack.redis_url)
    await redis.flushdb()
    await redis.aclose()


async def _rows(stack: Stack) -> int:
    return int((await _sql(stack.database_url, "SELECT count(*) FROM notifications"))[0][0])


async def _lag(stack: Stack) -> tuple[float, float]:
    row = (
        await _sql(
            stack.database_url,
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), percentile_cont(0.99) WITHIN GROUP (ORDER BY lag)"
            " FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - created_at) AS lag"
            " FROM notifications) AS l",
        )
    )[0]
    return float(row[0] or 0), float(row[1] or 0)


class RssSampler(threading.Thread):
    """Largest resident set size of some processes (and their children) while it runs."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0)
        self.running = True

    def run(self) -> None:
        """Sample every 200 ms."""
        while self.running:
            for name, pid in self.pids.items():
                try:
                    process = psutil.Process(pid)
                    rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
                    self.peak[name] = max(self.peak[name], rss)
                except psutil.Error:
                    pass
            time.sleep(0.2)


class Timeline(threading.Thread):
    """Every second: rows stored in Postgres and notifications waiting in the stream."""

    def __init__(self, stack: Stack, per_request: int) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.per_request = per_request
        self.samples: list[tuple[float, int, int]] = []  # (seconds since start, rows, backlog notifications)
        self.running = True

    def run(self) -> None:
        """Sample until stopped."""
        asyncio.run(self._sample())

    async def _sample(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.stack.database_url)
        redis = Redis.from_url(self.stack.redis_url)
        start = time.monotonic()
        try:
            while self.running:
                rows = await conn.fetchval("SELECT count(*) FROM notifications")
                backlog = await redis.xlen("notify:stream")
                self.samples.append((round(time.monotonic() - start, 2), int(rows), int(backlog) * self.per_request))
                await asyncio.sleep(1.0)
        finally:
            await conn.close()
            await redis.aclose()


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        process.kill()


def _wrk(port: int, path: str, body: bytes, key: str, seconds: int, tmp: Path) -> dict[str, float]:
    script = tmp / "wrk.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{body.decode()}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    out = subprocess.run(
        ["wrk", "-t1", "-c50", f"-d{seconds}s", "--latency", "-s", str(script), f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0}

    def latency(pct: str) -> float:
        found = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        return float(found.group(1)) * units[found.group(2)] if found else float("nan")

    return {
        "requests": requests,
        "ok": requests - (int(bad.group(1)) if bad else 0),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": latency("50"),
        "p99": latency("99"),
    }


def run_design(
    design: str, mode: str, stack: Stack, seconds: int, tmp: Path, api_workers: int = 1, drain_workers: int = 1
) -> dict[str, Any]:
    """Load one design with one kind of request; return the figures."""
    path, body, per_request = MODES[mode]
    asyncio.run(_reset(stack))
    port = free_port()
    api = _spawn(
        [str(BIN / "uvicorn"), DESIGNS[design], "--port", str(port), "--no-access-log", "--log-level", "warning",
         "--workers", str(api_workers)],
        stack.env,
        tmp / f"{design}-api.log",
    )  # fmt: skip
    workers = [
        _spawn([str(BIN / "arq"), "worker.main.WorkerSettings"], stack.env, tmp / f"{design}-worker.log")
        for _ in range(drain_workers if design in DRAINED else 0)
    ]
    worker = workers[0] if workers else None
    try:
        _wait_port(port)
        time.sleep(1.0 + api_workers)
        sampler = RssSampler({"api": api.pid, **({"worker": worker.pid} if worker else {})})
        sampler.start()
        timeline = Timeline(stack, per_request)
        timeline.start()
        started = time.monotonic()
        load = _wrk(port, path, body, stack.api_key, seconds, tmp)
        accepted = int(load["ok"]) * per_request
        deadline = time.monotonic() + 120
        while (stored := asyncio.run(_rows(stack))) < accepted and time.monotonic() < deadline:
            time.sleep(0.2)
        drained = time.monotonic()
        sampler.running = timeline.running = False
        timeline.join()
        lag_p50, lag_p99 = asyncio.run(_lag(stack))
    finally:
        _stop(api)
        for process in workers:
            _stop(process)
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
        "timeline": timeline.samples,
    }


def half_load_lag(stack: Stack, mode: str, max_rps: float, seconds: int, tmp: Path) -> dict[str, Any]:
    """The service at half its measured maximum request rate: persistence lag p50/p99."""
    path, body, per_request = MODES[mode]
    asyncio.run(_reset(stack))
    port = free_port()
    api = _spawn(
        [str(BIN / "uvicorn"), DESIGNS["service"], "--port", str(port), "--no-access-log"],
        stack.env,
        tmp / "half-api.log",
    )
    worker = _spawn([str(BIN / "arq"), "worker.main.WorkerSettings"], stack.env, tmp / "half-worker.log")
    try:
        _wait_port(port)
        time.sleep(1.0)
        rate = max_rps / 2
        result = asyncio.run(
            run_fixed_rate("127.0.0.1", port, path, body, {"Authorization": f"Bearer {stack.api_key}"}, rate, seconds)
        )
        deadline = time.monotonic() + 60
        while asyncio.run(_rows(stack)) < result.ok * per_request and time.monotonic() < deadline:
            time.sleep(0.2)
        lag_p50, lag_p99 = asyncio.run(_lag(stack))
    finally:
        _stop(api)
        _stop(worker)
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
    asyncio.run(_reset(stack))
    port = free_port()
    api = _spawn([str(BIN / "uvicorn"), DESIGNS["service"], "--port", str(port)], stack.env, tmp / "mem-api.log")
    try:
        _wait_port(port)
        time.sleep(1.0)
        return asyncio.run(redis_bytes_per_pending(stack, port))
    finally:
        _stop(api)


def _markdown(
    rows: list[dict[str, Any]], half: list[dict[str, Any]], bytes_per: float, args: argparse.Namespace
) -> str:
    lines = [
        f"# Benchmark {datetime.now(UTC).isoformat(timespec='seconds')}",
        "",
        f"`python -m loadtest.bench --seconds {args.seconds} --pg-delay-ms {args.pg_delay_ms} "
        f"--appendfsync {args.appendfsync} --api-workers {args.api_workers} --drain-workers {args.drain_workers}"
        f"{f' --drain-batch {args.drain_batch}' if args.drain_batch else ''}` — wrk -t1 -c50 on the same 2 cores.",
        "",
        "| design | mode | accepted notif/s | req/s | p50 ms | p99 ms | stored notif/s | lag p50 ms | lag p99 ms"
        " | API RSS MB | worker RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['design']} | {r['mode']} | {r['accepted_per_s']} | {r['requests_per_s']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['stored_per_s']} | {r['lag_p50_ms']} | {r['lag_p99_ms']} | {r['api_rss_mb']} | "
            f"{r['worker_rss_mb']} |"
        )
    by = {(r["design"], r["mode"]): r for r in rows}
    lines += ["", "| ratio (accepted notifications/s) | single | multiple(100) |", "|---|---|---|"]
    for base in ("naive", "direct"):
        cells = []
        for mode in ("single", "multiple"):
            ours, theirs = by.get(("service", mode)), by.get((base, mode))
            cells.append(f"{ours['accepted_per_s'] / theirs['accepted_per_s']:.2f}x" if ours and theirs else "-")
        lines.append(f"| service / {base} | {cells[0]} | {cells[1]} |")
    if half:
        lines += [
            "",
            "Service at half its maximum rate (fixed-rate load, 64 connections):",
            "",
            "| mode | rate req/s | sent | ok | HTTP p50 ms | HTTP p99 ms | lag p50 ms | lag p99 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {h['mode']} | {h['rate_rps']} | {h['sent']} | {h['ok']} | {h['http_p50_ms']} | {h['http_p99_ms']} | "
            f"{h['lag_p50_ms']} | {h['lag_p99_ms']} |"
            for h in half
        ]
    if bytes_per:
        lines += ["", f"Redis memory per pending notification (stream entry share + cache key): {bytes_per:.0f} bytes."]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, mode in zip(axes, ("single", "multiple"), strict=True):
        data = [r for r in rows if r["mode"] == mode]
        names = [r["design"] for r in data]
        ax.bar([n + "\naccepted" for n in names], [r["accepted_per_s"] for r in data], color="#4477aa")
        ax.bar([n + "\nstored" for n in names], [r["stored_per_s"] for r in data], color="#66ccee")
        ax.set_title(f"{mode}: notifications/s")
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_timelines(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({r["mode"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(2, len(modes), figsize=(6 * len(modes), 6), squeeze=False)
    for column, mode in enumerate(modes):
        for r in (r for r in rows if r["mode"] == mode):
            t = [sample[0] for sample in r["timeline"]]
            axes[0][column].plot(t, [sample[1] for sample in r["timeline"]], label=r["design"])
            axes[1][column].plot(t, [sample[2] for sample in r["timeline"]], label=r["design"])
        axes[0][column].set_title(f"{mode}: notifications stored in Postgres")
        axes[1][column].set_title(f"{mode}: notifications waiting in Redis")
        axes[1][column].set_xlabel("seconds since the load started")
        for ax in (axes[0][column], axes[1][column]):
            ax.legend()
            ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    """Start the servers, measure every design, write the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--pg-delay-ms", type=float, default=0.0, help="latency added to every Postgres round trip")
    parser.add_argument("--appendfsync", default="always", choices=["always", "everysec", "no"])
    parser.add_argument("--designs", default="service,naive,direct")
    parser.add_argument("--modes", default="single,multiple")
    parser.add_argument("--skip-extras", action="store_true", help="no half-load lag and memory runs")
    parser.add_argument("--label", default="")
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--drain-workers", type=int, default=1, help="arq worker processes")
    parser.add_argument("--drain-batch", type=int, default=0, help="DRAIN_BATCH_ENTRIES (0: the default)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk (make bench installs it)")

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        pg = EmbeddedPostgres(tmp / "pg", free_port(), {"track_commit_timestamp": "on", "max_wal_size": "4GB"}).start()
        redis_server = EmbeddedRedis(tmp / "redis", free_port(), appendfsync=args.appendfsync).start()
        proxy = None
        try:
            upgrade_database(pg.url)
            service_id, api_key = asyncio.run(_make_tenant(pg.url, redis_server.url))
            database_url = pg.url
            if args.pg_delay_ms:
                proxy_port = free_port()
                proxy = subprocess.Popen(
                    [sys.executable, "-m", "loadtest.pgproxy", "--listen", str(proxy_port),
                     "--target", f"127.0.0.1:{pg.port}", "--delay-ms", str(args.pg_delay_ms)],
                    cwd=ROOT,
                )  # fmt: skip
                _wait_port(proxy_port)
                database_url = f"postgresql://postgres@127.0.0.1:{proxy_port}/postgres"
            env = {
                **os.environ,
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_server.url,
                "BENCH_API_KEY": api_key,
                "BENCH_SERVICE_ID": service_id,
                "ACCESS_LOG": "false",
                "LOG_LEVEL": "WARNING",
                "PYTHONPATH": str(ROOT),
                "WORKER_METRICS_PORT": "0",
                **({"DRAIN_BATCH_ENTRIES": str(args.drain_batch)} if args.drain_batch else {}),
            }
            stack = Stack(pg.url, redis_server.url, api_key, service_id, env)
            rows = []
            for mode in args.modes.split(","):
                for design in args.designs.split(","):
                    row = run_design(design, mode, stack, args.seconds, tmp, args.api_workers, args.drain_workers)
                    print({k: v for k, v in row.items() if k != "timeline"}, flush=True)
                    rows.append(row)
            half: list[dict[str, Any]] = []
            bytes_per = 0.0
            if not args.skip_extras:
                for row in rows:
                    if row["design"] == "service":
                        half.append(half_load_lag(stack, row["mode"], row["requests_per_s"], args.seconds, tmp))
                        print(half[-1], flush=True)
                bytes_per = memory_figures(stack, tmp)
        finally:
            if proxy:
                proxy.terminate()
            redis_server.stop()
            pg.stop()

    label = f"-{args.label}" if args.label else ""
    when = datetime.now(UTC).isoformat(timespec="seconds")
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = _markdown(rows, half, bytes_per, args)
    (RESULTS / f"bench{label}.md").write_text(report)
    title = f"pg delay {args.pg_delay_ms} ms, appendfsync {args.appendfsync}"
    _plot(rows, RESULTS / f"bench{label}.png", title)
    _plot_timelines(rows, RESULTS / f"bench{label}-timeline.png", title)
    csv_path = RESULTS / "bench.csv"
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as out:
        columns = [k for k in rows[0] if k != "timeline"]
        fields = ["when", "label", "pg_delay_ms", "appendfsync", "drain_batch", *columns]
        writer = csv.DictWriter(out, fieldnames=fields)
        if new:
            writer.writeheader()
        for row in rows:
            settings = {"pg_delay_ms": args.pg_delay_ms, "appendfsync": args.appendfsync}
            figures = {k: v for k, v in row.items() if k != "timeline"}
            writer.writerow(
                {"when": when, "label": args.label, **settings, "drain_batch": args.drain_batch or 500, **figures}
            )
    print(report)


if __name__ == "__main__":
    main()
