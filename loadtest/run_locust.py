"""`make loadtest`: a headless locust run against the running service (`make run`), with what the server stored.

    .venv/bin/python -m loadtest.run_locust --scenario single --users 60 --spawn-rate 10 --run-time 30s
    .venv/bin/python -m loadtest.run_locust --scenario mixed --host http://127.0.0.1:8000
    PORT=8300 make loadtest ARGS=--record      # a `make run` on port 8300; the figures kept in loadtest/results/

Scenarios: single, multiple, heartbeat, post_get, unknown, invalid (one user class of loadtest/locustfile.py
each) and mixed (all of them, by their class weights). The service is the one at --host, else API_URL, else HOST
and PORT (as `make run` takes them), else the running `make run`'s API, else http://127.0.0.1:8000. Besides
locust's figures (requests, failures, requests/s,
average, p95 and max response time, from its stats CSV), it reads the service's own servers — Postgres at
DATABASE_URL and Redis at REDIS_URL, else those of the running `make run` (it writes them to .data/servers.env: an
embedded server whose default port was taken is elsewhere), else postgresql://postgres@127.0.0.1:55432/postgres
and redis://127.0.0.1:56379/0:

- backlog_at_end: entries in the stream (accepted requests not yet stored) the moment locust exits;
- stored_during_run: rows added to `notifications` from the first request the API accepted until the backlog is
  drained, or until 30 s after locust exits, whichever comes first; stored_per_s: the same over that wall time;
- notifications_accepted: successful single POSTs x1 plus successful /multiple POSTs x100.

A backlog left from earlier is drained (up to 30 s) before the run starts. Appends one row to
.data/loadtest/locust.csv, keeps locust's CSVs in .data/loadtest/locust/<UTC time>_<scenario>_*.csv (ignored by
git: a run leaves the checkout clean) and prints the row as a markdown table; with --record, to the tracked
loadtest/results/locust.csv and loadtest/results/locust/ instead. Exits with locust's exit code (1 when a request
failed).
"""

import argparse
import asyncio
import csv
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import httpx
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared import keys, run_data

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
#: Where --record keeps the figures (tracked), and where a run keeps them otherwise (ignored).
RECORDED = HERE / "results"
UNRECORDED = run_data.DATA / "loadtest"
RESULTS_CSV = "locust.csv"
LOCUST_CSV_DIR = "locust"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:55432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:56379/0"
DRAIN_WAIT_SECONDS = 30.0
POLL_SECONDS = 0.01

SCENARIOS: dict[str, tuple[str, ...]] = {
    "single": ("SingleUser",),
    "multiple": ("MultipleUser",),
    "heartbeat": ("HeartbeatUser",),
    "post_get": ("PostThenGetUser",),
    "unknown": ("UnknownIdUser",),
    "invalid": ("InvalidUser",),
}
SCENARIOS["mixed"] = tuple(name for classes in SCENARIOS.values() for name in classes)

#: notifications in one successful request, by locust's (Type, Name) row
NOTIFICATIONS_PER_REQUEST = {("POST", "/notifications/v1/"): 1, ("POST", "/notifications/v1/multiple"): 100}
FIELDS = [
    "when", "scenario", "users", "spawn_rate", "run_time", "requests", "failures", "rps", "avg_ms", "p95_ms",
    "max_ms", "notifications_accepted", "stored_during_run", "stored_per_s", "backlog_at_end",
]  # fmt: skip


@dataclass(frozen=True)
class StatsRow:
    """One row of locust's `<prefix>_stats.csv` (times in milliseconds; p95 is None without requests)."""

    method: str
    name: str
    requests: int
    failures: int
    rps: float
    avg_ms: float
    p95_ms: float | None
    max_ms: float


def read_stats(path: Path) -> list[StatsRow]:
    """Parse locust's stats CSV; the last row is the one named "Aggregated"."""
    with path.open(newline="") as stats:
        return [
            StatsRow(
                method=row["Type"],
                name=row["Name"],
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                rps=float(row["Requests/s"]),
                avg_ms=float(row["Average Response Time"]),
                p95_ms=None if row["95%"] in ("", "N/A") else float(row["95%"]),
                max_ms=float(row["Max Response Time"]),
            )
            for row in csv.DictReader(stats)
        ]


def aggregated(rows: list[StatsRow]) -> StatsRow:
    """Return the "Aggregated" row."""
    return next(row for row in rows if row.name == "Aggregated")


def notifications_accepted(rows: list[StatsRow]) -> int:
    """Count the notifications of the successful POSTs (1 per single POST, 100 per /multiple)."""
    return sum((row.requests - row.failures) * NOTIFICATIONS_PER_REQUEST.get((row.method, row.name), 0) for row in rows)


@dataclass
class ServerFigures:
    """What the service's servers showed around the run, and locust's exit code."""

    backlog_at_end: int = 0
    stored_at_stop: int = 0
    stored: int = 0
    window_seconds: float = 0.0
    drained: bool = False
    exit_code: int = 0


async def _last_entry_id(redis: Redis) -> str:
    try:
        info = await redis.xinfo_stream(keys.STREAM)
    except ResponseError:  # no stream yet
        return "0-0"
    return str(info["last-generated-id"])


async def _wait_drained(redis: Redis, seconds: float) -> float | None:
    """Poll until the stream is empty and return when it was seen so; None if it was not within `seconds`."""
    deadline = time.perf_counter() + seconds
    while True:
        now = time.perf_counter()
        if await redis.xlen(keys.STREAM) == 0:
            return now
        if now >= deadline:
            return None
        await asyncio.sleep(POLL_SECONDS)


async def run_measured(command: list[str], database_url: str, redis_url: str) -> ServerFigures:
    """Run locust with `command` and measure backlog and storage rate on the servers."""
    figures = ServerFigures()
    redis = Redis.from_url(redis_url, decode_responses=True)
    pg = await asyncpg.connect(database_url)
    try:
        if await _wait_drained(redis, DRAIN_WAIT_SECONDS) is None:
            print(f"warning: the backlog from before did not drain within {DRAIN_WAIT_SECONDS:.0f}s", file=sys.stderr)
        before = int(await pg.fetchval("SELECT count(*) FROM notifications"))
        last_id = await _last_entry_id(redis)
        start = time.perf_counter()
        process = await asyncio.create_subprocess_exec(*command)
        exited = asyncio.create_task(process.wait())
        first_accept: float | None = None
        while not exited.done():  # the run starts when the stream gets its first new entry
            if first_accept is None and await _last_entry_id(redis) != last_id:
                first_accept = time.perf_counter()
            await asyncio.sleep(POLL_SECONDS)
        figures.exit_code = await exited
        figures.backlog_at_end = int(await redis.xlen(keys.STREAM))
        figures.stored_at_stop = int(await pg.fetchval("SELECT count(*) FROM notifications")) - before
        drained_at = await _wait_drained(redis, DRAIN_WAIT_SECONDS)
        figures.drained = drained_at is not None
        end = drained_at if drained_at is not None else time.perf_counter()
        figures.stored = int(await pg.fetchval("SELECT count(*) FROM notifications")) - before
        figures.window_seconds = end - (first_accept if first_accept is not None else start)
    finally:
        await pg.close()
        await redis.aclose()
    return figures


def markdown(rows: list[dict[str, object]], fields: list[str]) -> str:
    """Return `rows` as a markdown table of `fields`."""
    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(str(row[field]) for field in fields) + " |" for row in rows]
    return "\n".join(lines)


def service_url(environ: Mapping[str, str], running: Mapping[str, str]) -> str:
    """The service's URL: API_URL, else HOST and PORT (as `make run` reads them), else the running `make run`'s."""
    if environ.get("API_URL"):
        return environ["API_URL"].rstrip("/")
    if environ.get("HOST") or environ.get("PORT"):
        return f"http://{environ.get('HOST') or '127.0.0.1'}:{environ.get('PORT') or 8000}"
    return running.get("API_URL") or "http://127.0.0.1:8000"


def _shown(path: Path) -> Path:
    return path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path


def main() -> int:
    """Parse arguments, run locust, record and print the figures; return locust's exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--spawn-rate", type=float, default=10)
    parser.add_argument("--run-time", default="30s")
    parser.add_argument("--host", help="the service's URL (default: API_URL, HOST and PORT, the running `make run`)")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="single")
    parser.add_argument(
        "--record", action="store_true", help="keep the figures in the tracked loadtest/results/ (else .data/loadtest/)"
    )
    args = parser.parse_args()

    running = run_data.read_running()
    host = args.host or service_url(os.environ, running)
    try:
        httpx.get(f"{host}/status/heartbeat", timeout=5).raise_for_status()
    except httpx.HTTPError as error:
        sys.exit(f"the service does not answer at {host} ({error}); start it with `make run`, or set --host or PORT")
    database_url = os.environ.get("DATABASE_URL") or running.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    database_url = database_url.replace("+asyncpg", "")
    redis_url = os.environ.get("REDIS_URL") or running.get("REDIS_URL") or DEFAULT_REDIS_URL

    when = datetime.now(UTC)
    folder = RECORDED if args.record else UNRECORDED
    results = folder / RESULTS_CSV
    prefix = folder / LOCUST_CSV_DIR / f"{when:%Y%m%dT%H%M%SZ}_{args.scenario}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(args.users)]
    command += ["-r", str(args.spawn_rate), "-t", args.run_time, "--host", host, "--csv", str(prefix)]
    command += ["--only-summary", *SCENARIOS[args.scenario]]
    server = asyncio.run(run_measured(command, database_url, redis_url))

    stats_file = Path(f"{prefix}_stats.csv")
    if not stats_file.exists():
        sys.exit(f"locust wrote no {stats_file} (exit code {server.exit_code})")
    rows = read_stats(stats_file)
    total = aggregated(rows)
    record: dict[str, object] = {
        "when": when.isoformat(timespec="seconds"),
        "scenario": args.scenario,
        "users": args.users,
        "spawn_rate": args.spawn_rate,
        "run_time": args.run_time,
        "requests": total.requests,
        "failures": total.failures,
        "rps": round(total.rps, 1),
        "avg_ms": round(total.avg_ms, 1),
        "p95_ms": "" if total.p95_ms is None else round(total.p95_ms),
        "max_ms": round(total.max_ms),
        "notifications_accepted": notifications_accepted(rows),
        "stored_during_run": server.stored,
        "stored_per_s": round(server.stored / server.window_seconds) if server.window_seconds > 0 else 0,
        "backlog_at_end": server.backlog_at_end,
    }
    new = not results.exists()
    with results.open("a", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(record)

    per_name = [
        {**asdict(row), "rps": round(row.rps, 1), "avg_ms": round(row.avg_ms, 1), "max_ms": round(row.max_ms),
         "p95_ms": "" if row.p95_ms is None else round(row.p95_ms)}
        for row in rows
    ]  # fmt: skip
    print(f"\n{markdown([record], FIELDS)}\n\n{markdown(per_name, [field.name for field in fields(StatsRow)])}\n")
    until = "the backlog was drained" if server.drained else f"{DRAIN_WAIT_SECONDS:.0f}s after locust exited"
    print(
        f"stored: {server.stored} notifications in {server.window_seconds:.3f}s, from the first accepted request "
        f"until {until}; {server.stored_at_stop} of them by the time locust exited. "
        f"Row appended to {_shown(results)}, locust's CSVs: {_shown(prefix)}_*.csv"
    )
    return server.exit_code


if __name__ == "__main__":
    sys.exit(main())
