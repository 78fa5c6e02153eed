"""Day partitions of `notifications` (`notifications_pYYYYMMDD`), by range on the UUIDv7 id: made ahead, dropped late.

`maintain` (an hourly cron in the workers, `python -m shared.cli partitions maintain`; one process at a time) makes
yesterday's, today's and the next DAYS_AHEAD days' partitions and drops those wholly older than RETENTION_DAYS.
`ensure` (the drain, before storing) makes any missing day, so an accepted notification is always stored, however
old its day. Age is judged by Postgres's clock: a process more than MAX_CLOCK_SKEW off it drops nothing, and
today's day and the days of queued notifications are never dropped. The reasons: docs/architecture.md.
"""

import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared import keys
from shared.metrics import PARTITIONS_DROPPED

logger = logging.getLogger(__name__)

TABLE = "notifications"
#: Partitions are made for this many days after today, ahead of need.
DAYS_AHEAD = 3
#: Advisory lock keys (arbitrary constants of this service): one to make partitions, one to maintain.
CREATE_LOCK = 7_160_001
MAINTAIN_LOCK = 7_160_002
#: How far the maintaining process's clock may be from Postgres's before maintenance refuses to drop anything.
MAX_CLOCK_SKEW = timedelta(minutes=5)
#: Entries read from the head of each stream for the oldest day still queued: the head holds the oldest entries,
#: and API processes' clocks differ a little, so the first entry alone may not hold the oldest notification id.
QUEUE_SAMPLE = 100
_EPOCH = date(1970, 1, 1)
_DAY_MS = 86_400_000


def day_of(notification_id: UUID | str) -> date:
    """Return the UTC day a UUIDv7 was made on (from its 48-bit millisecond prefix)."""
    raw = notification_id.bytes if isinstance(notification_id, UUID) else UUID(notification_id).bytes
    return _day_of_millis(int.from_bytes(raw[:6], "big"))


def _day_of_millis(millis: int) -> date:
    return _EPOCH + timedelta(milliseconds=millis)


def first_id(day: date) -> UUID:
    """Return the smallest UUID whose 48-bit millisecond prefix falls on `day` (a partition's lower bound)."""
    millis = (day - _EPOCH).days * _DAY_MS
    return UUID(bytes=millis.to_bytes(6, "big") + bytes(10))


def name_of(day: date) -> str:
    """Return the partition's table name for `day`."""
    return f"{TABLE}_p{day:%Y%m%d}"


def today(now: datetime | None = None) -> date:
    """Return the current UTC day."""
    return (now or datetime.now(UTC)).astimezone(UTC).date()


def first_kept_day(retention_days: int, now: datetime | None = None) -> date | None:
    """Return the oldest day still inside retention (None: RETENTION_DAYS is 0, everything is kept).

    A day's partition is dropped once its whole day lies more than `retention_days` in the past, so every
    notification is kept at least `retention_days` and at most one day longer.
    """
    if retention_days <= 0:
        return None
    return today((now or datetime.now(UTC)) - timedelta(days=retention_days))


async def create(conn: AsyncConnection, day: date) -> bool:
    """Make the partition of `day` unless it exists, in the caller's transaction; return whether it was made.

    Takes a transaction advisory lock, so two makers of the same day queue instead of colliding.
    """
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CREATE_LOCK})
    name = name_of(day)
    exists = await conn.scalar(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name})
    if exists:
        return False
    low, high = first_id(day), first_id(day + timedelta(days=1))
    await conn.execute(text(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
    await conn.execute(text(f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES FROM ('{low}') TO ('{high}')"))
    return True


async def ensure(engine: AsyncEngine, days: set[date], known: set[date]) -> list[date]:
    """Make the partitions of `days` not in `known` (a cache the caller keeps); return the days made.

    Days found or made are added to `known`, so a caller asks Postgres once per day it meets.
    """
    made = []
    for day in sorted(days - known):
        async with engine.begin() as conn:
            if await create(conn, day):
                made.append(day)
                logger.info("made partition %s", name_of(day))
        known.add(day)
    return made


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition of `notifications`: its table, its day, its id range and Postgres's estimate of its rows."""

    name: str
    day: date | None  # None: a table attached by hand, whose bounds are not one of our days
    bounds: str
    approximate_rows: int
    detach_pending: bool


LIST_PARTITIONS = text(
    """
    SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bounds,
           greatest(c.reltuples, 0)::bigint AS approximate_rows, i.inhdetachpending
    FROM pg_inherits AS i
    JOIN pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = CAST(:table AS regclass)
    ORDER BY c.relname
    """
)


def _day_of_name(name: str) -> date | None:
    prefix = f"{TABLE}_p"
    if not name.startswith(prefix):
        return None
    try:
        return datetime.strptime(name[len(prefix) :], "%Y%m%d").replace(tzinfo=UTC).date()
    except ValueError:
        return None


async def list_partitions(conn: AsyncConnection) -> list[Partition]:
    """Return the partitions of `notifications`, oldest first (row counts are the planner's estimates)."""
    rows = (await conn.execute(LIST_PARTITIONS, {"table": TABLE})).all()
    return [Partition(row[0], _day_of_name(row[0]), row[1], int(row[2]), bool(row[3])) for row in rows]


# A request's cache key ends with the stem its notification ids share (26 hex digits, the first 12 its millisecond).
_KEY_STEM = re.compile(rb":([0-9a-f]{26})$")
# An inline entry's JSON array starts with its first notification, whose document starts with its id.
_FIRST_ID = re.compile(rb'"id":"([0-9a-fA-F-]{36})"')


def queued_days(entry_id: bytes, fields: dict[bytes, bytes] | None) -> set[date]:
    """Return the days a stream entry speaks for: its own (Redis's clock) and its notifications' (the API's)."""
    days = {_day_of_millis(int(entry_id.split(b"-", 1)[0]))}
    fields = fields or {}
    key, inline = fields.get(keys.STREAM_KEY_FIELD), fields.get(keys.STREAM_FIELD)
    if key and (stem := _KEY_STEM.search(key)):
        days.add(_day_of_millis(int(stem.group(1)[:12], 16)))
    elif inline and (first := _FIRST_ID.search(inline[:256])):
        days.add(day_of(first.group(1).decode()))
    return days


async def oldest_queued_day(redis: Redis, layout: keys.Layout) -> date | None:
    """Return the oldest day of a notification still queued in any shard's stream (None: the streams are empty).

    Read from the first QUEUE_SAMPLE entries of each stream (one pipeline): entries leave a stream only once
    stored, so those are the oldest not yet stored, pending at a consumer or not.
    """
    async with redis.pipeline(transaction=False) as pipe:
        for shard in layout.shards:
            pipe.xrange(shard.stream, count=QUEUE_SAMPLE)
        replies = await pipe.execute()
    days = [day for entries in replies for entry_id, fields in entries for day in queued_days(entry_id, fields)]
    return min(days, default=None)


async def clocks(conn: AsyncConnection, now: datetime | None = None) -> tuple[datetime, timedelta]:
    """Return Postgres's `now()` and how far this process's clock (or `now`, standing in for it) is from it."""
    before = now or datetime.now(UTC)
    database: datetime = await conn.scalar(text("SELECT now()"))
    after = now or datetime.now(UTC)
    if database < before:
        return database, before - database
    return database, max(database - after, timedelta(0))


@dataclass(slots=True)
class Maintenance:
    """What one `maintain` call did (`skipped`: another process held the maintenance lock).

    `refused` says why nothing was dropped although RETENTION_DAYS asked for it (empty: nothing was refused).
    """

    created: list[str]
    dropped: list[str]
    skipped: bool = False
    refused: str = ""


async def maintain(
    engine: AsyncEngine,
    redis: Redis,
    retention_days: int,
    layout: keys.Layout | None = None,
    now: datetime | None = None,
) -> Maintenance:
    """Make the partitions from yesterday to DAYS_AHEAD days ahead; detach and drop the expired ones.

    Days are Postgres's (`now` stands in for this process's clock, as tests move it): nothing is dropped when the
    two clocks disagree by more than MAX_CLOCK_SKEW, nor Postgres's today, nor a day still queued in the streams
    of `layout` (if they cannot be read, nothing is dropped). Safe to run from many processes at once: one holds
    the maintenance lock, the others return `skipped`. Dropping is `DETACH PARTITION … CONCURRENTLY` (it cannot
    run inside a transaction, so this connection is in autocommit) and then `DROP TABLE`; a detach interrupted
    earlier is finished with `FINALIZE`.
    """
    result = Maintenance([], [])
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        if not await auto.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": MAINTAIN_LOCK}):
            result.skipped = True
            return result
        try:
            database_now, skew = await clocks(auto, now)
            start = today(database_now)
            keep_from = first_kept_day(retention_days, database_now)
            wanted = {start + timedelta(days=offset) for offset in range(-1, DAYS_AHEAD + 1)}
            if keep_from is not None:
                wanted = {day for day in wanted if day >= keep_from}
            result.created = [name_of(day) for day in await ensure(engine, wanted, set())]
            if keep_from is not None:
                limit, result.refused = await _first_day_to_keep(redis, layout or keys.layout(), skew, keep_from, start)
                if limit is None:
                    logger.warning("partition maintenance dropped nothing: %s", result.refused)
                else:
                    result.dropped = await _drop_before(auto, limit, retention_days)
        finally:
            await auto.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MAINTAIN_LOCK})
    return result


async def _first_day_to_keep(
    redis: Redis, layout: keys.Layout, skew: timedelta, by_retention: date, database_today: date
) -> tuple[date | None, str]:
    """Return the first day not to drop: RETENTION_DAYS's, unless today or a queued day is older; or None and why."""
    if skew > MAX_CLOCK_SKEW:
        return None, (
            f"this process's clock is {skew} away from Postgres's (more than MAX_CLOCK_SKEW={MAX_CLOCK_SKEW}): "
            "set the clocks right (NTP)"
        )
    try:
        queued = await oldest_queued_day(redis, layout)
    except (RedisError, OSError) as exc:
        return None, f"the streams cannot be read ({exc!r}): the day of a queued notification might be dropped"
    return min(by_retention, database_today, queued or database_today), ""


async def _drop_before(conn: AsyncConnection, limit: date, retention_days: int) -> list[str]:
    """Detach and drop the partitions of the days before `limit`; return their names."""
    dropped = []
    for partition in await list_partitions(conn):
        if partition.day is None or partition.day >= limit:
            continue
        await _drop(conn, partition)
        dropped.append(partition.name)
        PARTITIONS_DROPPED.inc()
        logger.info("dropped partition %s (older than RETENTION_DAYS=%d)", partition.name, retention_days)
    return dropped


async def _drop(conn: AsyncConnection, partition: Partition) -> None:
    mode = "FINALIZE" if partition.detach_pending else "CONCURRENTLY"
    await conn.execute(text(f"ALTER TABLE {TABLE} DETACH PARTITION {partition.name} {mode}"))
    await conn.execute(text(f"DROP TABLE {partition.name}"))


def describe(partition: Partition) -> dict[str, Any]:
    """Return a partition as the CLI prints it."""
    return {
        "name": partition.name,
        "range": partition.bounds,
        "approximate_rows": partition.approximate_rows,
        **({"detach_pending": True} if partition.detach_pending else {}),
    }
