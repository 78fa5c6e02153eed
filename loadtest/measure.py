"""Measuring instruments of the benchmark: wrk at full speed, peak RSS, and a stored/waiting timeline."""

import asyncio
import re
import resource
import subprocess
import threading
import time
from pathlib import Path

import psutil
from redis.asyncio import Redis

#: wrk script part giving every request an Idempotency-Key of its own.
_KEYED_REQUESTS = """
counter = 0
request = function()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = "bench-" .. counter
  return wrk.format()
end
"""


def wrk(port: int, path: str, body: bytes, key: str, seconds: int, tmp: Path, keyed: bool = False) -> dict[str, float]:
    """Load `path` using wrk: 1 thread, 50 connections, `seconds` long; return requests, rate and latencies.

    With `keyed`, every request carries an Idempotency-Key of its own.
    """
    script = tmp / "wrk.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{body.decode()}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n' + (_KEYED_REQUESTS if keyed else "")
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


class CpuMeter:
    """CPU used between `start` and `stop`, in percent of one core.

    Named processes are read with their children, live or exited; `load` is this process's finished children (wrk).
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._before: dict[str, float] = {}
        self._started = 0.0
        self._children = 0.0

    def _read(self) -> dict[str, float]:
        seconds = {}
        for name, pid in self.pids.items():
            try:
                process = psutil.Process(pid)
                own = process.cpu_times()
                live = [child.cpu_times() for child in process.children(recursive=True)]
                # and children that exited since (reaped: in their parent's children_* times), such as Postgres's
                # backends and autovacuum workers: without them a reading could go down (Postgres at -4 %)
                seconds[name] = sum(t.user + t.system + t.children_user + t.children_system for t in [own, *live])
            except psutil.Error:
                seconds[name] = 0.0
        return seconds

    @staticmethod
    def _children_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def start(self) -> None:
        """Take the first reading."""
        self._before = self._read()
        self._children = self._children_seconds()
        self._started = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Return each process's CPU since `start` (and `load` for the finished children), % of one core."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        after = self._read()
        used = {name: after[name] - self._before.get(name, 0.0) for name in after}
        used["load"] = self._children_seconds() - self._children
        return {name: round(100 * seconds / elapsed) for name, seconds in used.items()}


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

    def __init__(self, database_url: str, redis_url: str, per_request: int) -> None:
        super().__init__(daemon=True)
        self.database_url = database_url
        self.redis_url = redis_url
        self.per_request = per_request
        self.samples: list[tuple[float, int, int]] = []  # (seconds since start, rows, backlog notifications)
        self.running = True

    def run(self) -> None:
        """Sample until stopped."""
        asyncio.run(self._sample())

    async def _sample(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.database_url)
        redis = Redis.from_url(self.redis_url)
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
