"""Drain benchmark: how fast one warmed-up worker moves a backlog from the stream into Postgres.

Fills the stream with N notifications exactly as the API would (entries of --per-entry notifications), then times
one `Drain` storing all of them, and, for scale, a raw asyncpg COPY of the same rows into the same tables.
Prints the figures and appends them to loadtest/results/drain.csv.

    .venv/bin/python -m loadtest.bench_drain --notifications 200000 --per-entry 100

Uses DATABASE_URL / REDIS_URL when set (the tables are TRUNCATED, the Redis database FLUSHED), else embedded
servers in a temporary folder.
"""

import argparse
import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import orjson
import uuid_utils
from redis.asyncio import Redis
from sqlalchemy import text

from loadtest.bench_report import append_csv
from loadtest.servers import bench_servers
from shared import keys
from shared.codec import encode_notification, join_array
from shared.db import create_engine
from shared.settings import Settings
from worker.drain import Drain

SERVICE_ID = "00000000-0000-7000-8000-000000000001"  # the default service of migration 0002
RESULTS = Path(__file__).resolve().parent / "results" / "drain.csv"


async def fill(redis: Redis, total: int, per_entry: int) -> None:
    """Queue `total` notifications in requests of `per_entry`, as the API's /multiple would (cache key + entry)."""
    now = datetime.now(UTC)
    async with redis.pipeline(transaction=False) as pipe:
        for start in range(0, total, per_entry):
            docs = [
                encode_notification(
                    str(uuid_utils.uuid7()), SERVICE_ID, f"user{n}@example.com", {"band": "Incubus"}, now
                )
                for n in range(start, min(start + per_entry, total))
            ]
            cache_key = keys.cache_key(SERVICE_ID, str(orjson.loads(docs[0])["id"]))
            pipe.set(cache_key, join_array(docs))
            pipe.xadd(keys.STREAM, {keys.STREAM_KEY_FIELD: cache_key})
            if len(pipe) >= 400:
                await pipe.execute()
        await pipe.execute()


async def run(settings: Settings, total: int, per_entry: int) -> dict[str, float]:
    """Fill, drain, then COPY the same rows; return the figures."""
    redis = Redis.from_url(settings.require_redis_url())
    engine = create_engine(settings.require_database_url())
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE notifications CASCADE"))
        await conn.execute(
            text("INSERT INTO services VALUES (:id, 'default', now()) ON CONFLICT DO NOTHING"), {"id": SERVICE_ID}
        )
    await redis.flushdb()
    await fill(redis, total, per_entry)
    payloads = await redis.mget([fields[keys.STREAM_KEY_FIELD] for _, fields in await redis.xrange(keys.STREAM)])

    drain = Drain(redis, engine, settings, "bench")
    await drain.ensure_group()
    started = time.perf_counter()
    while batch := await drain.read_new():
        await drain.drain_batch(batch)
    drain_seconds = time.perf_counter() - started

    rows: list[tuple[object, ...]] = []
    pairs: list[tuple[object, ...]] = []
    for payload in payloads:
        for doc in orjson.loads(payload):
            created = datetime.fromisoformat(doc["created_at"])
            rows.append((UUID(doc["id"]), UUID(doc["service_id"]), doc["to"], created, created, None))
            pairs.extend((UUID(doc["id"]), key, value) for key, value in doc["personalization"].items())
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE notifications CASCADE"))
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        started = time.perf_counter()
        async with raw.transaction():
            await raw.copy_records_to_table(
                "notifications",
                records=rows,
                columns=["id", "service_id", "to", "created_at", "updated_at", "sent_at"],
            )
            await raw.copy_records_to_table("notification_personalization", records=pairs)
        copy_seconds = time.perf_counter() - started
    await redis.aclose()
    await engine.dispose()
    return {
        "notifications": total,
        "per_entry": per_entry,
        "batch_entries": settings.drain_batch_entries,
        "drain_per_s": round(total / drain_seconds),
        "copy_per_s": round(total / copy_seconds),
        "ratio": round(copy_seconds / drain_seconds, 3),
    }


def main() -> None:
    """Parse arguments, start servers if needed, run, print and record."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notifications", type=int, default=200_000)
    parser.add_argument("--per-entry", type=int, default=100)
    parser.add_argument("--batch-entries", type=int, default=500)
    parser.add_argument("--label", default="")
    args = parser.parse_args()

    with bench_servers() as (database_url, redis_url):
        settings = Settings(
            database_url=database_url,
            redis_url=redis_url,
            drain_batch_entries=args.batch_entries,
            drain_block_ms=10,
            _env_file=None,
        )
        figures = asyncio.run(run(settings, args.notifications, args.per_entry))
    figures_row = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "label": args.label, **figures}
    print(figures_row)
    append_csv(RESULTS, [figures_row])


if __name__ == "__main__":
    main()
