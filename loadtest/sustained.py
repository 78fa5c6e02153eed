"""`make bench`'s sustained rate: the highest multiple(100) rate the service both accepts and stores, for a minute.

Write-behind accepts faster than it stores for a while (the stream absorbs the difference until
MAX_BACKLOG_ENTRIES refuses writes), so the rate a producer can keep up is the one at which the backlog stays
flat. One window is the service (uvicorn with `api_workers` processes, `drain_workers` arq workers, default
settings) under a fixed-rate load of multiple(100) POSTs (loadgen.run_fixed_rate, 64 connections), judged
sustained from what the servers did (`verdict`):

- every request answered 201 (none refused with 503 by backpressure);
- the load kept to its schedule: the last answer came within SCHEDULE_SLACK_SECONDS of the schedule's end
  (an API that cannot take the rate queues requests and falls behind);
- the backlog flat: the stream's length (XLEN of `notify:stream` x 100, sampled every SAMPLE_SECONDS) averaged
  over the last third of the window exceeds its average over the first third by at most FLAT_TOLERANCE (2 %) of
  the notifications offered between the two, plus FLAT_SLACK_SECONDS (0.5 s) of the rate for the batch-sized
  sawtooth of a healthy drain: storing more than ~3 % slower than the rate fails a 60 s window (~7 % a 15 s
  probe);
- Postgres holding every accepted notification within CATCH_UP_SECONDS (3 s) of the load ending.

The search (`next_rate`) starts from an estimate (the stored rate of a saturating run), brackets with windows of
`probe_seconds` (15 s) stepping by STEP (x1.25), bisects until the highest sustained and lowest unsustained rates
are within RESOLUTION (5 %), then confirms the highest sustained rate over the full window (60 s), stepping down
by RESOLUTION when the confirmation fails (at most CONFIRM_ATTEMPTS windows). Each configuration's figures are
those of its last full window, with the CPU of each process over the load (CpuMeter; `load` is this process,
which generates the load and samples the backlog) to show which one is the limit.
"""

import asyncio
import math
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from devstack.embedded import free_port
from loadtest.loadgen import run_fixed_rate
from loadtest.measure import CpuMeter
from loadtest.stack import BIN, DESIGNS, MODES, Stack, persistence_lag, reset, spawn, stop, wait_port
from shared import keys

PATH, BODY, PER_REQUEST = MODES["multiple"]
SAMPLE_SECONDS = 0.5
FLAT_TOLERANCE = 0.02
FLAT_SLACK_SECONDS = 0.5
CATCH_UP_SECONDS = 3.0
SCHEDULE_SLACK_SECONDS = 1.0
STEP = 1.25
RESOLUTION = 0.05
MAX_PROBES = 12
CONFIRM_ATTEMPTS = 5
#: How long a confirmation window waits for Postgres to hold every row (so the lag covers them all).
CONFIRM_DRAIN_WAIT_SECONDS = 60.0


@dataclass
class Window:
    """What one fixed-rate window of the service saw."""

    rate_rps: int
    seconds: float
    sent: int = 0
    ok: int = 0
    load_seconds: float = 0.0
    backlog: list[tuple[float, int]] = field(default_factory=list)  # (seconds since the load started, notif.)
    stored_at_end: int = 0
    catch_up_seconds: float | None = None  # None: not caught up within the wait
    http_p50: float = float("nan")
    http_p99: float = float("nan")
    lag_p50: float = float("nan")
    lag_p99: float = float("nan")
    cpu: dict[str, float] = field(default_factory=dict)


def parse_configs(text: str) -> list[tuple[int, int]]:
    """Parse "1x1,1x2,2x2" into [(API processes, drain workers), ...]."""
    configs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        api, _, drain = item.partition("x")
        if not (api.isdigit() and drain.isdigit() and int(api) >= 1 and int(drain) >= 1):
            raise ValueError(f"not <api workers>x<drain workers>: {item!r}")
        configs.append((int(api), int(drain)))
    return configs


def thirds(samples: list[tuple[float, int]], seconds: float) -> tuple[float, float]:
    """Mean backlog over the first and over the last third of a window of `seconds` (0 when a third is empty)."""
    first = [n for t, n in samples if t < seconds / 3]
    last = [n for t, n in samples if seconds * 2 / 3 <= t <= seconds]
    return (sum(first) / len(first) if first else 0.0), (sum(last) / len(last) if last else 0.0)


def backlog_is_flat(samples: list[tuple[float, int]], seconds: float, rate_per_s: float) -> bool:
    """True when the backlog over the last third is within the tolerance of the first third's (module docstring)."""
    first, last = thirds(samples, seconds)
    between = seconds * 2 / 3  # from the middle of the first third to the middle of the last
    return last - first <= rate_per_s * (FLAT_TOLERANCE * between + FLAT_SLACK_SECONDS)


def verdict(window: Window) -> str:
    """Return why a window's rate is not sustained, or "" when it is."""
    rate = window.rate_rps * PER_REQUEST
    if window.ok < window.sent:
        return f"{window.sent - window.ok} of {window.sent} requests not answered 201"
    if window.load_seconds > window.seconds + SCHEDULE_SLACK_SECONDS:
        return f"the API fell {window.load_seconds - window.seconds:.1f} s behind the schedule"
    if not backlog_is_flat(window.backlog, window.seconds, rate):
        first, last = thirds(window.backlog, window.seconds)
        return f"the backlog grew from {first:.0f} to {last:.0f} notifications"
    if window.catch_up_seconds is None or window.catch_up_seconds > CATCH_UP_SECONDS:
        return f"Postgres not caught up {CATCH_UP_SECONDS:.0f} s after the load"
    return ""


def next_rate(lowest_failed: int | None, highest_sustained: int | None, estimate: int) -> int | None:
    """The next request rate to probe, or None when the bracket is within RESOLUTION (or nothing is sustained).

    Starts at `estimate`; steps by STEP up from a sustained rate or down from an unsustained one until both are
    known, then bisects between them.
    """
    lo, hi = highest_sustained, lowest_failed
    if lo is None and hi is None:
        return max(1, estimate)
    if hi is None:
        assert lo is not None
        return max(lo + 1, math.ceil(lo * STEP))
    if lo is None:
        return None if hi <= 1 else min(hi - 1, math.floor(hi / STEP))
    if hi - lo <= 1 or hi <= lo * (1 + RESOLUTION):
        return None
    return (lo + hi) // 2


def search(sustains: Callable[[int], bool], estimate: int) -> tuple[int | None, int | None]:
    """Probe rates chosen by `next_rate` (at most MAX_PROBES); return (highest sustained, lowest not sustained)."""
    highest_sustained: int | None = None
    lowest_failed: int | None = None
    for _ in range(MAX_PROBES):
        rate = next_rate(lowest_failed, highest_sustained, estimate)
        if rate is None:
            break
        if sustains(rate):
            highest_sustained = rate
        else:
            lowest_failed = rate
    return highest_sustained, lowest_failed


async def _sample_backlog(redis: Redis, started: float, samples: list[tuple[float, int]]) -> None:
    while True:
        samples.append((round(time.perf_counter() - started, 2), int(await redis.xlen(keys.STREAM)) * PER_REQUEST))
        await asyncio.sleep(SAMPLE_SECONDS)


async def _measure(stack: Stack, port: int, window: Window, pids: dict[str, int], drain_wait: float) -> None:
    """Drive the window's load, sampling the backlog; then wait for Postgres to catch up."""
    redis = Redis.from_url(stack.redis_url)
    conn = await asyncpg.connect(stack.database_url)
    cpu = CpuMeter(pids)
    try:
        started = time.perf_counter()
        sampler = asyncio.create_task(_sample_backlog(redis, started, window.backlog))
        cpu.start()
        load_cpu = time.process_time()  # the load generator runs in this process (with the sampler)
        result = await run_fixed_rate(
            "127.0.0.1", port, PATH, BODY, {"Authorization": f"Bearer {stack.api_key}"},
            window.rate_rps, window.seconds,
        )  # fmt: skip
        window.cpu = {**cpu.stop(), "load": round(100 * (time.process_time() - load_cpu) / result.seconds)}
        sampler.cancel()
        ended = time.perf_counter()
        window.stored_at_end = int(await conn.fetchval("SELECT count(*) FROM notifications"))
        accepted = result.ok * PER_REQUEST
        stored = window.stored_at_end
        while stored < accepted and time.perf_counter() - ended < drain_wait:
            await asyncio.sleep(0.1)
            stored = int(await conn.fetchval("SELECT count(*) FROM notifications"))
        window.catch_up_seconds = time.perf_counter() - ended if stored >= accepted else None
    finally:
        await conn.close()
        await redis.aclose()
    window.sent, window.ok, window.load_seconds = result.sent, result.ok, result.seconds
    window.http_p50, window.http_p99 = result.percentile(50), result.percentile(99)


def run_window(
    stack: Stack, tmp: Path, api_workers: int, drain_workers: int, rate_rps: int, seconds: float, confirm: bool
) -> Window:
    """Start the service afresh (empty tables and Redis), load it at `rate_rps` for `seconds`; return the window."""
    asyncio.run(reset(stack))
    port = free_port()
    api = spawn(
        [str(BIN / "uvicorn"), DESIGNS["service"], "--port", str(port), "--no-access-log", "--log-level", "warning",
         "--workers", str(api_workers)],
        stack.env,
        tmp / "sustained-api.log",
    )  # fmt: skip
    workers: list[subprocess.Popen[bytes]] = [
        spawn([str(BIN / "arq"), "worker.main.WorkerSettings"], stack.env, tmp / "sustained-worker.log")
        for _ in range(drain_workers)
    ]
    window = Window(rate_rps, seconds)
    try:
        wait_port(port)
        time.sleep(1.0 + api_workers)
        pids = {"api": api.pid, **{f"worker{n}": w.pid for n, w in enumerate(workers)}, **stack.server_pids}
        asyncio.run(
            _measure(stack, port, window, pids, CONFIRM_DRAIN_WAIT_SECONDS if confirm else CATCH_UP_SECONDS + 0.5)
        )
        if confirm:
            window.lag_p50, window.lag_p99 = asyncio.run(persistence_lag(stack))
    finally:
        stop(api)
        for process in workers:
            stop(process)
    return window


def find_sustained(
    stack: Stack,
    tmp: Path,
    api_workers: int,
    drain_workers: int,
    estimate_rps: int,
    seconds: float,
    probe_seconds: float,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Search and confirm the highest sustained multiple(100) rate of one configuration; return its figures."""

    def record(rate: int, window_seconds: float, why: str) -> None:
        probes.append(f"{rate * PER_REQUEST} for {window_seconds:g} s: {why or 'sustained'}")
        log(f"{api_workers}x{drain_workers} at {probes[-1]}")

    def probe(rate: int) -> bool:
        why = verdict(run_window(stack, tmp, api_workers, drain_workers, rate, probe_seconds, confirm=False))
        record(rate, probe_seconds, why)
        return not why

    probes: list[str] = []
    highest_sustained, lowest_failed = search(probe, estimate_rps)
    window, why = None, "no rate sustained"
    candidate = highest_sustained
    for _ in range(CONFIRM_ATTEMPTS if candidate else 0):
        assert candidate is not None
        window = run_window(stack, tmp, api_workers, drain_workers, candidate, seconds, confirm=True)
        why = verdict(window)
        record(candidate, seconds, why)
        if not why:
            break
        lowest_failed = candidate
        candidate = max(1, math.floor(candidate / (1 + RESOLUTION)))
    return row(api_workers, drain_workers, window, why, lowest_failed, probes)


def row(
    api_workers: int, drain_workers: int, window: Window | None, why: str, lowest_failed: int | None, probes: list[str]
) -> dict[str, Any]:
    """The report's and the CSV's figures of one configuration's last window (its confirmation)."""
    figures: dict[str, Any] = {"api_workers": api_workers, "drain_workers": drain_workers, "sustained": not why}
    if window is not None:
        first, last = thirds(window.backlog, window.seconds)
        load_seconds = max(window.load_seconds, 1e-9)
        figures |= {
            "rate_per_s": window.rate_rps * PER_REQUEST,
            "requests_per_s": window.rate_rps,
            "window_s": window.seconds,
            "accepted_per_s": round(window.ok * PER_REQUEST / load_seconds),
            "stored_per_s": round(window.stored_at_end / load_seconds),
            "backlog_first_third": round(first),
            "backlog_last_third": round(last),
            "backlog_max": max((n for _, n in window.backlog), default=0),
            "catch_up_s": None if window.catch_up_seconds is None else round(window.catch_up_seconds, 2),
            "http_p50_ms": round(window.http_p50 * 1000, 1),
            "http_p99_ms": round(window.http_p99 * 1000, 1),
            "lag_p50_ms": round(window.lag_p50 * 1000, 1),
            "lag_p99_ms": round(window.lag_p99 * 1000, 1),
            "cpu_api": window.cpu.get("api", 0),
            "cpu_workers": sum(v for k, v in window.cpu.items() if k.startswith("worker")),
            "cpu_redis": window.cpu.get("redis", 0),
            "cpu_postgres": window.cpu.get("postgres", 0),
            "cpu_load": window.cpu.get("load", 0),
        }
    return {
        **figures,
        "not_sustained_at_per_s": None if lowest_failed is None else lowest_failed * PER_REQUEST,
        "why_not": why,
        "probes": " | ".join(probes),
    }
