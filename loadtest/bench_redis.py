"""What one Redis server process does per second with the service's real write: the group-commit FLUSH script.

docs/scaling.md turns per-process figures into node counts; this gives the Redis node's. It starts an embedded
Redis of its own (a fresh data folder per measurement, AOF on, `appendfsync always` or `everysec`) and has client
processes call `api.flush.FLUSH` through redis-py (`register_script`, EVALSHA) the way the API's group commit
does: one call carries `--batch` requests, each a cache key and its JSON array (a single POST: one notification,
~350 bytes; a multiple(100): 100 of them, ~35 KB) and one stream entry naming it. Several connections per client
process keep Redis busy while Python packs the next call. The requests are counted on the server (XLEN of the
stream) and each process's CPU read with psutil, in % of one core, so the table says who the bottleneck was:
Redis near 100 % is Redis; a client near 100 % per process with Redis below is the Python client; neither
(Redis waiting for its fsyncs, `always`) is the disk.

The same Redis then serves `redis-benchmark` (C, so the client is not the limit) for references side by side:
plain SET and XADD of 350 bytes (unpipelined and pipelined x16), and the FLUSH script itself with the same batch
of single-POST requests (`__rand_int__` keys), which tells what Redis does with the script when Python is not
the client.

    .venv/bin/python -m loadtest.bench_redis [--seconds 8] [--rounds 2] [--label ...]

Every figure is printed; rows are appended to loadtest/results/redis.csv (one per measurement and round).
No timed assertion anywhere: it is a measurement, not a test.
"""

import argparse
import asyncio
import csv
import multiprocessing
import os
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, cast

import psutil
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from api.flush import FLUSH
from devstack.embedded import EmbeddedRedis
from loadtest.bench_report import append_csv
from loadtest.measure import CpuMeter
from shared import keys
from shared.codec import encode_notification, join_array
from shared.ids import request_ids

RESULTS = Path(__file__).resolve().parent / "results" / "redis.csv"
SERVICE = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
#: Kinds of request: notifications per request, requests per script call.
MODES = {"single": (1, 50), "multiple": (100, 10)}
REDIS_BENCHMARK = "redis-benchmark"


def entry(count: int) -> bytes:
    """Return a request's JSON array of `count` notifications as the API writes it (~350 bytes each)."""
    _, ids = request_ids(count)
    docs = [
        encode_notification(
            notification_id,
            SERVICE,
            f"user{index}@example.com",
            {"band": "Incubus", "venue": "Brixton Academy", "name": f"Listener {index}"},
            datetime.now(UTC),
        )
        for index, notification_id in enumerate(ids)
    ]
    return join_array(docs)


async def _call_flush(redis_url: str, per_request: int, batch: int, connections: int, go: Event, stop: Event) -> None:
    redis = Redis.from_url(redis_url, max_connections=connections)
    flush = redis.register_script(FLUSH)
    payload = entry(per_request)
    header = f"{batch} 0 0"
    await redis.ping()

    async def connection(slot: int) -> None:
        serial = 0
        while not stop.is_set():
            serial += 1
            prefix = f"{keys.CACHE_PREFIX}{SERVICE}:{os.getpid()}-{slot}-{serial}-"
            keys_: list[str] = [keys.STREAM]
            args: list[bytes | str] = [header]
            for position in range(batch):
                keys_.append(f"{prefix}{position}")
                args += (payload, f"r{serial}-{position}")
            await flush(keys=keys_, args=args)

    await asyncio.to_thread(go.wait)
    await asyncio.gather(*(connection(slot) for slot in range(connections)))
    await redis.aclose()


def _client(redis_url: str, per_request: int, batch: int, connections: int, go: Event, stop: Event) -> None:
    """One client process: `connections` concurrent script calls until `stop` is set."""
    asyncio.run(_call_flush(redis_url, per_request, batch, connections, go, stop))


def _started(datadir: Path, appendfsync: str) -> EmbeddedRedis:
    """Start a Redis on a fresh folder: AOF with `appendfsync` (`off`: no AOF at all, the CPU-only reference)."""
    server = EmbeddedRedis(datadir, appendfsync="everysec" if appendfsync == "off" else appendfsync).start()
    client = SyncRedis.from_url(server.url)
    if appendfsync == "off":
        client.config_set("appendonly", "no")
    # A rewrite forks and rewrites the whole (here ever-growing, never drained) dataset: not what a drained
    # production Redis pays. Off during the window; the AOF still gets every write (and its fsync).
    client.config_set("auto-aof-rewrite-percentage", 0)
    client.close()
    return server


def _length(client: SyncRedis) -> int:
    return cast(int, client.xlen(keys.STREAM))


def _aof_bytes(client: SyncRedis) -> int:
    info = cast(dict[str, Any], client.info("persistence"))
    return int(info.get("aof_current_size", 0))


def measure_flush(
    tmp: Path, appendfsync: str, mode: str, seconds: float, processes: int, connections: int
) -> dict[str, Any]:
    """Call FLUSH from `processes` client processes for `seconds` on a fresh Redis; return the figures."""
    per_request, batch = MODES[mode]
    server = _started(tmp / f"flush-{appendfsync}-{mode}-{time.time_ns()}", appendfsync)
    context = multiprocessing.get_context("spawn")
    go, stop = context.Event(), context.Event()
    clients = [
        context.Process(target=_client, args=(server.url, per_request, batch, connections, go, stop))
        for _ in range(processes)
    ]
    client = SyncRedis.from_url(server.url)
    try:
        for process in clients:
            process.start()
        time.sleep(1.5)  # the spawned interpreters import redis and connect
        meter = CpuMeter({"redis": server.pid, **{f"client{i}": p.pid or 0 for i, p in enumerate(clients)}})
        go.set()
        time.sleep(0.5)  # warm-up: every connection is calling
        before, aof_before = _length(client), _aof_bytes(client)
        machine = Machine()
        meter.start()
        started = time.monotonic()
        time.sleep(seconds)
        after, aof_after = _length(client), _aof_bytes(client)
        elapsed = time.monotonic() - started
        cpu = meter.stop()
        busy = machine.busy()
    finally:
        stop.set()
        for process in clients:
            process.join(timeout=30)
        client.close()
        server.stop()
    requests = (after - before) / elapsed
    client_cpu = [cpu[f"client{i}"] for i in range(processes)]
    return {
        "client": "redis-py",
        "appendfsync": appendfsync,
        "what": f"FLUSH {mode}",
        "requests_per_call": batch,
        "notifications_per_request": per_request,
        "connections": processes * connections,
        "requests_per_s": round(requests),
        "notifications_per_s": round(requests * per_request),
        "calls_per_s": round(requests / batch),
        "redis_cpu_pct": cpu["redis"],
        "client_cpu_pct": "/".join(str(value) for value in client_cpu),
        "aof_mb_per_s": round((aof_after - aof_before) / elapsed / 1e6, 1),
        "machine_cpu_pct": busy,
        "bottleneck": _bottleneck(cpu["redis"], client_cpu, busy),
    }


class Machine:
    """CPU of the whole machine (every process, other people's too) since it was made, in % of one core."""

    def __init__(self) -> None:
        self._before = psutil.cpu_times()

    def busy(self) -> int:
        """Return the machine's busy CPU since `__init__`, % of one core (200 = both cores of this VM)."""
        after = psutil.cpu_times()
        idle = (after.idle + after.iowait) - (self._before.idle + self._before.iowait)
        total = sum(after) - sum(self._before)
        return round(100 * psutil.cpu_count() * (1 - idle / total)) if total else 0


def _bottleneck(redis_cpu: float, client_cpu: list[float], machine: int) -> str:
    """Say who limited a measurement, from the CPU each used (% of one core)."""
    if redis_cpu >= 85:
        return "redis (a core)"
    if client_cpu and min(client_cpu) >= 85:
        return "the client (a core each)"
    if machine >= 90 * (psutil.cpu_count() or 1):
        return "the machine's cores (other jobs too)"
    return "neither at a core: Redis waiting (AOF write/fsync)"


def _flush_script_command(sha: str, batch: int) -> list[str]:
    """Return redis-benchmark's arguments for one FLUSH call of `batch` single-POST requests (random keys)."""
    payload = entry(1).decode()
    command = ["EVALSHA", sha, str(batch + 1), keys.STREAM]
    command += [f"{keys.CACHE_PREFIX}{SERVICE}:__rand_int__" for _ in range(batch)]
    command.append(f"{batch} 0 0")
    for position in range(batch):
        command += [payload, f"r{position}"]
    return command


def redis_benchmark(tmp: Path, appendfsync: str, requests: int, clients: int) -> list[dict[str, Any]]:
    """Run redis-benchmark (SET, XADD, FLUSH by EVALSHA) on a fresh Redis; return a row per command."""
    server = _started(tmp / f"reference-{appendfsync}-{time.time_ns()}", appendfsync)
    client = SyncRedis.from_url(server.url)
    sha = str(client.script_load(FLUSH))
    batch = MODES["single"][1]
    value = "x" * 350
    commands: list[tuple[str, list[str], int, int]] = [
        ("SET 350 B", ["SET", "bench:__rand_int__", value], 1, 1),
        ("SET 350 B", ["SET", "bench:__rand_int__", value], 16, 1),
        ("XADD 350 B", ["XADD", "bench:stream", "*", "v", value], 1, 1),
        ("XADD 350 B", ["XADD", "bench:stream", "*", "v", value], 16, 1),
        ("FLUSH single", _flush_script_command(sha, batch), 1, batch),
    ]
    rows = []
    try:
        for what, command, pipeline, per_call in commands:
            meter = CpuMeter({"redis": server.pid})
            calls = requests // per_call
            base = [REDIS_BENCHMARK, "-h", "127.0.0.1", "-p", str(server.port), "-c", str(clients), "-n", str(calls)]
            aof_before = _aof_bytes(client)
            machine = Machine()
            meter.start()
            started = time.monotonic()
            done = subprocess.run(
                [*base, "-P", str(pipeline), "-r", "100000000", "--csv", *command],
                capture_output=True,
                text=True,
                check=True,
            )
            elapsed = time.monotonic() - started
            cpu = meter.stop()
            busy = machine.busy()
            # --csv: a header, then "name","rps" and six latencies; the name (the command) is not escaped
            calls_per_s = float(done.stdout.strip().splitlines()[-1].split('","')[-7])
            rows.append(
                {
                    "client": f"redis-benchmark -P {pipeline}",
                    "appendfsync": appendfsync,
                    "what": what,
                    "requests_per_call": per_call,
                    "notifications_per_request": 1 if what.startswith("FLUSH") else "",
                    "connections": clients,
                    "requests_per_s": round(calls_per_s * per_call),
                    "notifications_per_s": round(calls_per_s * per_call) if what.startswith("FLUSH") else "",
                    "calls_per_s": round(calls_per_s),
                    "redis_cpu_pct": cpu["redis"],
                    "client_cpu_pct": cpu["load"],
                    "aof_mb_per_s": round((_aof_bytes(client) - aof_before) / elapsed / 1e6, 1),
                    "machine_cpu_pct": busy,
                    "bottleneck": _bottleneck(cpu["redis"], [cpu["load"]], busy),
                }
            )
            client.flushall()
    finally:
        client.close()
        server.stop()
    return rows


def _summary(rows: list[dict[str, Any]]) -> list[str]:
    """Median and spread over the rounds of each measurement, as Markdown table rows.

    `µs/request` is Redis's CPU per request (its CPU seconds over the requests it served): the figure to scale
    with when Redis did not have a core of its own.
    """
    groups: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["client"], row["appendfsync"], row["what"], row["connections"]), []).append(row)
    lines = [
        "| client | appendfsync | what | in flight | requests/s median (min-max) | notifications/s median |"
        " Redis CPU % | Redis µs/request | client CPU % | machine CPU % | AOF MB/s | bottleneck |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (client, fsync, what, connections), group in groups.items():
        rates = [int(row["requests_per_s"]) for row in group]
        notes = [int(row["notifications_per_s"]) for row in group if row["notifications_per_s"] not in ("", None)]
        cost = [10_000 * float(row["redis_cpu_pct"]) / int(row["requests_per_s"]) for row in group]
        cells = [
            client,
            fsync,
            what,
            str(connections),
            f"{statistics.median(rates):,.0f} ({min(rates):,}-{max(rates):,})",
            f"{statistics.median(notes):,.0f}" if notes else "",
            f"{statistics.median(float(row['redis_cpu_pct']) for row in group):.0f}",
            f"{statistics.median(cost):.1f}",
            ", ".join(str(row["client_cpu_pct"]) for row in group),
            f"{min(int(row['machine_cpu_pct']) for row in group)}-{max(int(row['machine_cpu_pct']) for row in group)}",
            f"{statistics.median(float(row['aof_mb_per_s']) for row in group):.0f}",
            ", ".join(sorted({str(row["bottleneck"]) for row in group})),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    """Measure FLUSH from redis-py and the redis-benchmark references, each fsync policy, `--rounds` times."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="timed window of each FLUSH measurement")
    parser.add_argument("--rounds", type=int, default=2, help="repeat everything (shared machines are noisy)")
    parser.add_argument("--processes", type=int, default=2, help="redis-py client processes")
    parser.add_argument(
        "--connections",
        default="8,32",
        help="concurrent script calls per client process, each value measured (an API process has 2 in flight)",
    )
    parser.add_argument("--benchmark-requests", type=int, default=200_000, help="requests per redis-benchmark run")
    parser.add_argument("--benchmark-clients", type=int, default=50)
    parser.add_argument("--fsync", default="always,everysec,off", help="AOF appendfsync policies; off: no AOF")
    parser.add_argument("--skip-reference", action="store_true", help="no redis-benchmark runs")
    parser.add_argument("--label", default="")
    parser.add_argument(
        "--summarize", metavar="LABEL", nargs="+", help="only print the table of results.csv rows with these labels"
    )
    args = parser.parse_args()
    if args.summarize:
        with RESULTS.open(newline="") as recorded:
            chosen = [row for row in csv.DictReader(recorded) if row["label"] in args.summarize]
        print("\n".join(_summary(chosen)))
        return
    when = datetime.now(UTC).isoformat(timespec="seconds")
    print(
        f"redis-server {EmbeddedRedis.executable()}, {psutil.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as folder:
        tmp = Path(folder)
        for round_ in range(1, args.rounds + 1):
            for fsync in args.fsync.split(","):
                for connections in [int(value) for value in args.connections.split(",")]:
                    for mode in MODES:
                        row = measure_flush(tmp, fsync, mode, args.seconds, args.processes, connections)
                        rows.append({"when": when, "label": args.label, "round": round_, **row})
                        print(rows[-1], flush=True)
                if not args.skip_reference:
                    for row in redis_benchmark(tmp, fsync, args.benchmark_requests, args.benchmark_clients):
                        rows.append({"when": when, "label": args.label, "round": round_, **row})
                        print(rows[-1], flush=True)
    append_csv(RESULTS, rows)
    print("\n".join(["", *_summary(rows)]), flush=True)


if __name__ == "__main__":
    main()
