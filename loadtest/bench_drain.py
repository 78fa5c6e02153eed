"""Drain benchmark: one warmed-up worker against a raw COPY of the same notifications into bare tables.

Fills the stream with N notifications (two personalization keys each) exactly as the API would (requests of
--per-entry notifications: a cache key holding the request's JSON array, an entry naming it), then times one
`Drain` storing all of them. In the same run, the same notifications are written by a raw asyncpg binary COPY,
in transactions as large as the drain's batches, into each candidate layout (in a scratch schema, records built
before the clock starts, so only Postgres's ingest is timed):

- `rows`: notifications + one row per personalization pair, primary keys only — the physical reference: the
  drain's ratio is against it;
- `rows+fk`: the same with the foreign keys of the schema before migration 0003 (service, notification);
- `jsonb` / `json` / `arrays`: one row per notification, personalization as a map (`jsonb`, `json`) or as two
  parallel `text[]` columns, primary key only;
- `service`: this project's `notifications` table (day partitions, jsonb map, check constraint) — what the drain
  writes, without the drain. For it the run also reports the WAL Postgres wrote and the bytes the table and its
  index hold per notification (the disk side of docs/scaling.md).

    .venv/bin/python -m loadtest.bench_drain --notifications 200000 --per-entry 100 [--kind native|email]

Everything is measured --rounds times (default 2) in turn and the best of each is kept. Prints the figures and
appends them to loadtest/results/drain.csv (one row per run) and drain-layouts.csv (one
row per layout). Runs on embedded servers of its own in a temporary folder; with --use-configured-servers on
those DATABASE_URL / REDIS_URL name (the tables are TRUNCATED, the Redis database FLUSHED, a schema
`bench_layouts` made and dropped).
"""

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import uuid_utils
from redis.asyncio import Redis
from sqlalchemy import text

from loadtest.bench_report import append_csv
from loadtest.servers import add_servers_flag, bench_servers
from shared import keys, queries
from shared.codec import NotificationDoc, encode_notification, join_array
from shared.db import create_engine
from shared.settings import Settings
from worker.drain import Drain

SERVICE_ID = "00000000-0000-7000-8000-000000000001"  # the default service of migration 0002
RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = "bench_layouts"
BASE_COLUMNS = 'id uuid PRIMARY KEY, service_id uuid NOT NULL, "to" text NOT NULL, created_at timestamptz NOT NULL, '
BASE_COLUMNS += "updated_at timestamptz NOT NULL, sent_at timestamptz"
NOTIFICATION_COLUMNS = ["id", "service_id", "to", "created_at", "updated_at", "sent_at"]
#: The candidate layouts: the tables each is made of (CREATE statements, in the scratch schema).
LAYOUTS: dict[str, list[str]] = {
    "rows": [
        f"CREATE TABLE {SCHEMA}.rows_n ({BASE_COLUMNS})",
        f"CREATE TABLE {SCHEMA}.rows_p (notification_id uuid, key text, value text NOT NULL, "
        "PRIMARY KEY (notification_id, key))",
    ],
    "rows+fk": [
        f"CREATE TABLE {SCHEMA}.services (id uuid PRIMARY KEY)",
        f"CREATE TABLE {SCHEMA}.fk_n ({BASE_COLUMNS}, FOREIGN KEY (service_id) REFERENCES {SCHEMA}.services)",
        f"CREATE TABLE {SCHEMA}.fk_p (notification_id uuid REFERENCES {SCHEMA}.fk_n, key text, value text NOT NULL, "
        "PRIMARY KEY (notification_id, key))",
    ],
    "jsonb": [f"CREATE TABLE {SCHEMA}.jsonb_n ({BASE_COLUMNS}, personalization jsonb NOT NULL)"],
    "json": [f"CREATE TABLE {SCHEMA}.json_n ({BASE_COLUMNS}, personalization json NOT NULL)"],
    "arrays": [f"CREATE TABLE {SCHEMA}.arrays_n ({BASE_COLUMNS}, keys text[] NOT NULL, vals text[] NOT NULL)"],
}


async def fill(redis: Redis, total: int, per_entry: int, kind: str = "native") -> None:
    """Queue `total` notifications in requests of `per_entry`, as the API's /multiple would (cache key + entry).

    `kind` "email": as the Notify v2 route makes them (type `email`, a reference each), so that they enter the
    listing indexes (migrations 0005, 0006), which the native routes' notifications (type and reference NULL) do not.
    """
    now = datetime.now(UTC)
    v2 = kind == "email"
    async with redis.pipeline(transaction=False) as pipe:
        for start in range(0, total, per_entry):
            docs = [
                encode_notification(
                    str(uuid_utils.uuid7()),
                    SERVICE_ID,
                    f"user{n}@example.com",
                    {"band": "Incubus", "city": f"City {n % 100}"},
                    now,
                    notification_type="email" if v2 else None,
                    reference=f"order-{n}" if v2 else None,
                )
                for n in range(start, min(start + per_entry, total))
            ]
            cache_key = keys.cache_key(SERVICE_ID, str(orjson.loads(docs[0])["id"]))
            payload = join_array(docs)
            pipe.set(cache_key, payload)
            pipe.xadd(keys.STREAM, {keys.STREAM_KEY_FIELD: cache_key, keys.STREAM_SIZE_FIELD: len(payload)})
            if len(pipe) >= 400:
                await pipe.execute()
        await pipe.execute()


def _records(docs: list[NotificationDoc]) -> dict[str, list[tuple[str, list[tuple[Any, ...]]]]]:
    """Each layout's COPY records of `docs`: a list of (table, records) per layout."""
    base: list[tuple[Any, ...]] = []
    pairs: list[tuple[Any, ...]] = []
    jsonb: list[tuple[Any, ...]] = []
    arrays: list[tuple[Any, ...]] = []
    for doc in docs:
        created = datetime.fromisoformat(doc["created_at"])
        row = (UUID(doc["id"]), UUID(doc["service_id"]), doc["to"], created, created, None)
        base.append(row)
        pairs.extend((row[0], key, value) for key, value in doc["personalization"].items())
        jsonb.append((*row, orjson.dumps(doc["personalization"]).decode()))
        arrays.append((*row, list(doc["personalization"]), list(doc["personalization"].values())))
    return {
        "rows": [("rows_n", base), ("rows_p", pairs)],
        "rows+fk": [("fk_n", base), ("fk_p", pairs)],
        "jsonb": [("jsonb_n", jsonb)],
        "json": [("json_n", jsonb)],
        "arrays": [("arrays_n", arrays)],
    }


async def _timed(step: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await step()
    return time.perf_counter() - started


async def copy_layouts(
    database_url: str, docs: list[NotificationDoc], per_transaction: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Raw COPY of `docs` into each layout (and into the service's own table); return notifications/s each.

    Also returns, for the service's table, the WAL written and the bytes stored (heap, TOAST and primary-key index
    of every partition), each per notification.
    """
    engine = create_engine(database_url)
    rates: dict[str, float] = {}
    disk: dict[str, float] = {}
    async with engine.connect() as conn:
        raw: Any = (await conn.get_raw_connection()).driver_connection
        await raw.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        await raw.execute(f"CREATE SCHEMA {SCHEMA}")
        parts = [docs[start : start + per_transaction] for start in range(0, len(docs), per_transaction)]
        records = [_records(part) for part in parts]
        for layout, statements in LAYOUTS.items():
            for statement in statements:
                await raw.execute(statement)
            if layout == "rows+fk":
                await raw.execute(f"INSERT INTO {SCHEMA}.services VALUES ('{SERVICE_ID}')")

            async def copy_all(layout: str = layout) -> None:
                for part in records:
                    async with raw.transaction():
                        for table, rows in part[layout]:
                            await raw.copy_records_to_table(table, records=rows, schema_name=SCHEMA)

            rates[layout] = len(docs) / await _timed(copy_all)
            print(f"  raw COPY into {layout}: {rates[layout]:,.0f} notifications/s", flush=True)
        await raw.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
        service_rows = [queries.copy_rows(part) for part in parts]

        async def copy_service() -> None:
            for rows in service_rows:
                async with raw.transaction():
                    await raw.copy_records_to_table("notifications", records=rows, columns=queries.NOTIFICATION_COLUMNS)

        await raw.execute("TRUNCATE notifications")
        await raw.execute("CHECKPOINT")  # full-page images then count as they would in steady state, once per page
        wal_from = await raw.fetchval("SELECT pg_current_wal_lsn()")
        rates["service"] = len(docs) / await _timed(copy_service)
        wal = await raw.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", wal_from)
        stored = await raw.fetchval(
            "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('notifications') WHERE isleaf"
        )
        disk = {"wal_bytes": float(wal) / len(docs), "stored_bytes": float(stored) / len(docs)}
        print(
            f"  raw COPY into the service's notifications: {rates['service']:,.0f} notifications/s,"
            f" {disk['wal_bytes']:.0f} bytes of WAL and {disk['stored_bytes']:.0f} bytes stored per notification",
            flush=True,
        )
        await raw.execute("TRUNCATE notifications")
    await engine.dispose()
    return rates, disk


async def drain_backlog(
    settings: Settings, total: int, per_entry: int, kind: str = "native"
) -> tuple[float, list[NotificationDoc]]:
    """Warm a drain up on a small backlog, then time it storing `total`; return notifications/s and the docs."""
    redis = Redis.from_url(settings.require_redis_url())
    engine = create_engine(settings.require_database_url())
    drain = Drain(redis, engine, settings, "bench")
    for count in (min(total, 10 * per_entry), total):  # the first pass warms up the code paths and connections
        async with engine.begin() as conn:
            await conn.execute(text("TRUNCATE notifications"))
            await conn.execute(
                text("INSERT INTO services VALUES (:id, 'default', now()) ON CONFLICT DO NOTHING"), {"id": SERVICE_ID}
            )
        await redis.flushdb()
        await fill(redis, count, per_entry, kind)
        await drain.ensure_group()
        names = [fields[keys.STREAM_KEY_FIELD] for _, fields in await redis.xrange(keys.STREAM)]
        payloads: list[bytes] = await redis.mget(names)  # decoded after the clock stops: no extra objects for GC
        started = time.perf_counter()
        while batch := await drain.read_new():
            await drain.drain_batch(batch)
        seconds = time.perf_counter() - started
    docs: list[NotificationDoc] = [doc for payload in payloads for doc in orjson.loads(payload)]
    async with engine.connect() as conn:
        stored = await conn.scalar(text("SELECT count(*) FROM notifications"))
    assert stored == total, f"the drain stored {stored} of {total}"
    await redis.aclose()
    await engine.dispose()
    return total / seconds, docs


def main() -> None:
    """Parse arguments, start servers if needed, run, print and record."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notifications", type=int, default=200_000)
    parser.add_argument("--per-entry", type=int, default=100)
    parser.add_argument("--batch-entries", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2, help="measure everything this many times; keep the best")
    parser.add_argument(
        "--kind",
        choices=("native", "email"),
        default="native",
        help="notifications as the native routes make them, or as POST /v2/notifications/email (type, reference)",
    )
    parser.add_argument("--label", default="")
    add_servers_flag(parser)
    args = parser.parse_args()

    with bench_servers(args.use_configured_servers) as (database_url, redis_url):
        settings = Settings(
            database_url=database_url,
            redis_url=redis_url,
            drain_batch_entries=args.batch_entries,
            drain_block_ms=10,
            _env_file=None,
        )
        drain_rate, copies, disk = 0.0, dict[str, float](), dict[str, float]()
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_}: draining {args.notifications:,} notifications with one worker…", flush=True)
            rate, docs = asyncio.run(drain_backlog(settings, args.notifications, args.per_entry, args.kind))
            print(f"  drain: {rate:,.0f} notifications/s", flush=True)
            drain_rate = max(drain_rate, rate)
            per_transaction = args.per_entry * args.batch_entries
            rates, disk = asyncio.run(copy_layouts(database_url, docs, per_transaction))
            for layout, rate in rates.items():
                copies[layout] = max(copies.get(layout, 0.0), rate)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    figures = {
        "when": when,
        "label": args.label,
        "kind": args.kind,
        "notifications": args.notifications,
        "per_entry": args.per_entry,
        "batch_entries": args.batch_entries,
        "rounds": args.rounds,
        "drain_per_s": round(drain_rate),
        # the physical reference: a raw COPY into bare tables, one row per notification and per pair
        "copy_bare_rows_per_s": round(copies["rows"]),
        "ratio_bare_rows": round(drain_rate / copies["rows"], 3),
        "copy_bare_jsonb_per_s": round(copies["jsonb"]),
        "copy_service_table_per_s": round(copies["service"]),
        # the last round's (they hardly vary: the same rows)
        "service_wal_bytes_per_notification": round(disk["wal_bytes"]),
        "service_stored_bytes_per_notification": round(disk["stored_bytes"]),
    }
    print(figures)
    append_csv(RESULTS / "drain.csv", [figures])
    append_csv(
        RESULTS / "drain-layouts.csv",
        [
            {"when": when, "label": args.label, "layout": layout, "notifications_per_s": round(rate)}
            for layout, rate in copies.items()
        ],
    )


if __name__ == "__main__":
    main()
