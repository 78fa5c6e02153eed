"""Jobs' candidate paths to the table (issue 21, docs/jobs.md), in-process, on the same rows.

The same N personalised notifications (no template, two placeholders' worth of personalization each) take:

- `job copy`: a CSV job's body read by `shared.recipient_csv` (native rules) in batches, each batch COPYed into
  `notifications` (with `job_id`), all in ONE transaction, committed at the end: validated and stored, durable.
  Also timed apart: the read and checks alone (`job read`), to show what the CSV costs; and `job copy
  overlapped`: the next batch read while Postgres takes the previous one.
- `multiple(1000) write`: the API's work for the same rows as N/1000 `/multiple` bodies (built before the clock
  starts): pydantic's check of each body, ids, encoding, and the group-commit write to Redis (`RedisWriter`, a few
  requests in flight at once, as concurrent clients would have). Queued, not stored.
- `multiple(1000) drain`: one worker's drain storing what that wrote: with the write, the path's whole cost.

    .venv/bin/python -m loadtest.bench_jobs [--notifications 100000] [--rounds 2] [--label ...]

Runs on embedded servers of its own (or --use-configured-servers: their notifications are TRUNCATED, the Redis
database FLUSHED). Prints notifications/s per path (best of --rounds) and appends a row to
loadtest/results/jobs.csv. A measurement, not a test: no figure is asserted.
"""

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import orjson
from redis.asyncio import Redis
from sqlalchemy import text

from api.writer import RedisWriter
from loadtest.bench_report import append_csv
from loadtest.servers import add_servers_flag, bench_servers
from shared import ids, keys, queries
from shared.codec import encode_notification, join_array
from shared.db import create_engine
from shared.recipient_csv import chunked, csv_rows, native_rules
from shared.schemas import notification_list
from shared.settings import Settings
from worker.drain import Drain

SERVICE_ID = "00000000-0000-7000-8000-000000000001"  # the default service of migration 0002
RESULTS = Path(__file__).resolve().parent / "results"
PER_REQUEST = 1000
IN_FLIGHT = 8
JOB_BATCH_ROWS = 5000
T = TypeVar("T")


def job_lines(total: int) -> Iterator[str]:
    """The lines of a CSV job of `total` rows (`to`, `name` and `band` columns), the header first, no line ends."""
    yield "to,name,band"
    for n in range(total):
        yield f"user{n}@example.com,Listener {n},Incubus"


def job_csv(total: int) -> bytes:
    """A CSV job of `total` rows: `to`, `name` and `band` columns."""
    return ("\r\n".join(job_lines(total)) + "\r\n").encode()


def multiple_items(start: int, stop: int) -> list[dict[str, Any]]:
    """The job's rows `start` to `stop` (excluded) as `/multiple` items, personalised as the CSV's."""
    return [
        {"to": f"user{n}@example.com", "personalization": {"name": f"Listener {n}", "band": "Incubus"}}
        for n in range(start, stop)
    ]


def multiple_bodies(total: int) -> list[bytes]:
    """The same rows as `/multiple` bodies of PER_REQUEST items."""
    return [
        orjson.dumps(multiple_items(start, min(start + PER_REQUEST, total))) for start in range(0, total, PER_REQUEST)
    ]


async def _reset(settings: Settings) -> None:
    engine = create_engine(settings.require_database_url())
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE notifications"))
        await conn.execute(
            text("INSERT INTO services VALUES (:id, 'default', now()) ON CONFLICT DO NOTHING"), {"id": SERVICE_ID}
        )
    await engine.dispose()
    redis = Redis.from_url(settings.require_redis_url())
    await redis.flushdb()
    await redis.aclose()


async def job_read(settings: Settings, body: bytes) -> float:
    """Read and check the job's rows, store nothing; return rows/s."""
    rules = native_rules(settings, "email", ["name", "band"])
    rows = 0
    started = time.perf_counter()
    async for batch in csv_rows(chunked(body), rules, max_listed=100, batch_rows=JOB_BATCH_ROWS):
        rows += len(batch)
    return rows / (time.perf_counter() - started)


async def job_copy(settings: Settings, body: bytes, overlapped: bool = False) -> float:
    """Read, check and COPY the job's rows in one transaction; return notifications/s (commit included).

    `overlapped`: the next batch is read and checked while Postgres takes the previous one (two batches at most in
    hand), so the path runs at the slower of the two rates rather than at their harmonic sum.
    """
    rules = native_rules(settings, "email", ["name", "band"])
    engine = create_engine(settings.require_database_url())
    stem = ids.new_stem()
    job_id = UUID(ids.notification_id_at(ids.new_stem(), 0))
    columns = [*queries.NOTIFICATION_COLUMNS, "job_id"]
    now, service = datetime.now(UTC), UUID(SERVICE_ID)

    async def records_of() -> AsyncIterator[list[tuple[Any, ...]]]:
        async for batch in csv_rows(chunked(body), rules, max_listed=100, batch_rows=JOB_BATCH_ROWS):
            yield [
                (UUID(ids.notification_id_at(stem, row.number - 1)), service, row.to,
                 orjson.dumps(row.personalisation).decode(), None, None, now, now, None, None, None, job_id)
                for row in batch
            ]  # fmt: skip

    async with engine.connect() as conn:
        raw: Any = (await conn.get_raw_connection()).driver_connection
        rows = 0
        started = time.perf_counter()
        async with raw.transaction():
            async for records in ahead(records_of()) if overlapped else records_of():
                await raw.copy_records_to_table("notifications", records=records, columns=columns)
                rows += len(records)
        seconds = time.perf_counter() - started
        stored = await raw.fetchval("SELECT count(*) FROM notifications WHERE job_id = $1", job_id)
    await engine.dispose()
    assert stored == rows, f"stored {stored} of {rows}"
    return rows / seconds


async def ahead(items: AsyncIterator[T]) -> AsyncIterator[T]:
    """Yield `items`, producing the next one while the consumer works on the current one."""
    queue: asyncio.Queue[tuple[T] | None] = asyncio.Queue(maxsize=1)

    async def produce() -> None:
        async for item in items:
            await queue.put((item,))
        await queue.put(None)

    producer = asyncio.create_task(produce())
    while (got := await queue.get()) is not None:
        yield got[0]
    await producer


async def multiple_write(settings: Settings, bodies: list[bytes]) -> float:
    """The API's work for `/multiple` bodies: check, ids, encode, group-commit write; return notifications/s."""
    redis = Redis.from_url(settings.require_redis_url())
    writer = RedisWriter(redis, max_backlog=10**9)
    model = notification_list(settings)
    total = 0

    async def request(body: bytes) -> int:
        items = model.validate_json(body)
        now = datetime.now(UTC)
        _, notification_ids = ids.request_ids(len(items))
        docs = [
            encode_notification(notification_id, SERVICE_ID, item.to, item.personalization or {}, now)
            for notification_id, item in zip(notification_ids, items, strict=True)
        ]
        await writer.write(join_array(docs), keys.cache_key(SERVICE_ID, notification_ids[0]))
        return len(docs)

    started = time.perf_counter()
    for start in range(0, len(bodies), IN_FLIGHT):
        total += sum(await asyncio.gather(*(request(body) for body in bodies[start : start + IN_FLIGHT])))
    seconds = time.perf_counter() - started
    await writer.close()
    await redis.aclose()
    return total / seconds


async def multiple_drain(settings: Settings, total: int) -> float:
    """One worker's drain storing what `multiple_write` queued; return notifications/s."""
    redis = Redis.from_url(settings.require_redis_url())
    engine = create_engine(settings.require_database_url())
    drain = Drain(redis, engine, settings, "bench")
    await drain.ensure_group()
    started = time.perf_counter()
    while batch := await drain.read_new():
        await drain.drain_batch(batch)
    seconds = time.perf_counter() - started
    async with engine.connect() as conn:
        stored = await conn.scalar(text("SELECT count(*) FROM notifications"))
    assert stored == total, f"the drain stored {stored} of {total}"
    await redis.aclose()
    await engine.dispose()
    return total / seconds


async def one_round(settings: Settings, total: int) -> dict[str, float]:
    """Measure each path once on fresh tables; return notifications/s per path."""
    body, bodies = job_csv(total), multiple_bodies(total)
    rates = {"job_read": await job_read(settings, body)}
    await _reset(settings)
    rates["job_copy"] = await job_copy(settings, body)
    await _reset(settings)
    rates["job_copy_overlapped"] = await job_copy(settings, body, overlapped=True)
    await _reset(settings)
    rates["multiple_write"] = await multiple_write(settings, bodies)
    rates["multiple_drain"] = await multiple_drain(settings, total)
    rates["multiple_end_to_end"] = 1 / (1 / rates["multiple_write"] + 1 / rates["multiple_drain"])
    await _reset(settings)
    return rates


def main() -> None:
    """Parse arguments, start servers, measure, print and record."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notifications", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2, help="measure everything this many times; keep the best")
    parser.add_argument("--label", default="")
    add_servers_flag(parser)
    args = parser.parse_args()
    best: dict[str, float] = {}
    with bench_servers(args.use_configured_servers) as (database_url, redis_url):
        settings = Settings(database_url=database_url, redis_url=redis_url, drain_block_ms=10, _env_file=None)
        asyncio.run(_reset(settings))
        for round_ in range(1, args.rounds + 1):
            rates = asyncio.run(one_round(settings, args.notifications))
            print(f"round {round_}: " + ", ".join(f"{name} {rate:,.0f}/s" for name, rate in rates.items()), flush=True)
            best = {name: max(best.get(name, 0.0), rate) for name, rate in rates.items()}
    figures: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "label": args.label,
        "notifications": args.notifications,
        "rounds": args.rounds,
        **{f"{name}_per_s": round(rate) for name, rate in best.items()},
        "job_copy_vs_multiple_write": round(best["job_copy"] / best["multiple_write"], 2),
        "job_copy_vs_multiple_end_to_end": round(best["job_copy"] / best["multiple_end_to_end"], 2),
        "overlapped_vs_multiple_end_to_end": round(best["job_copy_overlapped"] / best["multiple_end_to_end"], 2),
    }
    print(figures)
    append_csv(RESULTS / "jobs.csv", [figures])


if __name__ == "__main__":
    main()
