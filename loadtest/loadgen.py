"""A fixed-rate HTTP/1.1 load generator (wrk measures the most a server takes; this offers a set rate).

Keeps `connections` keep-alive connections and starts requests on a schedule of `rate` per second, so the
latency it reports includes any time a request waited for a free connection (no coordinated omission hiding).
"""

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    """What a fixed-rate run saw."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def percentile(self, p: float) -> float:
        """Latency percentile `p` (0..100) in seconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


async def _connection(
    host: str, port: int, request: bytes, schedule: asyncio.Queue[float], result: LoadResult, expect: int
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (planned := await schedule.get()) >= 0:
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            result.latencies.append(time.perf_counter() - planned)
            if int(status_line.split()[1]) == expect:
                result.ok += 1
            else:
                result.failed += 1
    finally:
        writer.close()


async def run_fixed_rate(
    url_host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    rate: float,
    seconds: float,
    connections: int = 64,
    expect: int = 201,
) -> LoadResult:
    """POST `body` to `path` at `rate` requests/s for `seconds`; return counts and latencies."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {url_host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{head}\r\n"
    ).encode() + body
    schedule: asyncio.Queue[float] = asyncio.Queue()
    result = LoadResult()
    workers = [
        asyncio.create_task(_connection(url_host, port, request, schedule, result, expect)) for _ in range(connections)
    ]
    start = time.perf_counter()
    total = int(rate * seconds)
    for n in range(total):
        due = start + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        schedule.put_nowait(due)
        result.sent += 1
    for _ in workers:
        schedule.put_nowait(-1.0)
    await asyncio.gather(*workers)
    result.seconds = time.perf_counter() - start
    return result
