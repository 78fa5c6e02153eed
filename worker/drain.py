"""The drain: stream → Postgres. Read a batch through the consumer group → store it idempotently → ack.

An entry is acknowledged and deleted only after the transaction that stored it committed, and storing it again (a
redelivery) inserts nothing twice. Entries a dead worker left pending are reclaimed after RECLAIM_IDLE_MS and
stored again; a Postgres outage is retried with capped backoff, the batch held; an entry that cannot be decoded or
that Postgres refuses as data goes to the dead-letter stream and never blocks the rest. The path, drawn, and the
reasons for it: docs/architecture.md.
"""

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import date

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import failures, keys, partitions, queries
from shared.backlog import read_backlog
from shared.codec import decode_entry
from shared.heap import collector_paused
from shared.metrics import (
    BACKLOG,
    BACKLOG_BY_SHARD,
    DEAD_LETTERS,
    DRAIN_BATCH_SECONDS,
    DRAIN_BATCH_SIZE,
    OLDEST_PENDING_AGE,
    ROWS_STORED,
    STORAGE_ERRORS,
)
from shared.settings import Settings
from worker.entries import Entry, Fetched, RawEntry, fetched_parts

logger = logging.getLogger(__name__)

#: How often a batch is retried at once when its day partition vanished between making it and storing into it.
MISSING_PARTITION_RETRIES = 3
#: Cache keys given their TTL per Redis call, so one call never blocks Redis for long.
EXPIRE_CHUNK = 5000
#: Entries acknowledged and deleted per script call: Lua's `unpack` gives at most ~8,000 values (LUAI_MAXCSTACK).
ACK_CHUNK = 1000

# Give every cache key (KEYS) the TTL ARGV[1]; a script is one command however many keys it touches.
EXPIRE_KEYS = """
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
return #KEYS
"""

# Acknowledge entries (ARGV[2..]) of group ARGV[1] on stream KEYS[1] and delete them, atomically: a worker dying in
# between would leave acknowledged entries in the stream, counted in the backlog for ever. A script rather than
# MULTI/EXEC, which redis-py's cluster client does not run.
ACK_AND_DELETE = """
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
"""


class PoisonError(Exception):
    """Postgres refused the data of a batch (not an outage): retrying the same batch cannot succeed."""


def _is_missing_partition(exc: BaseException) -> bool:
    """True when Postgres found no partition for a row (23514): the day's partition was dropped meanwhile."""
    return failures.sqlstate(exc) == "23514" and "no partition" in str(exc)


def consumer_name() -> str:
    """Return a consumer name unique to this process (host, pid, random suffix)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


def _stream_order(entry_id: bytes) -> tuple[int, int]:
    """A stream id (`<ms>-<seq>`) as the pair Redis orders it by."""
    millis, _, seq = entry_id.partition(b"-")
    return int(millis), int(seq or 0)


class Drain:
    """Moves notifications from the Redis stream into Postgres; one instance per worker process."""

    def __init__(
        self,
        redis: Redis,
        engine: AsyncEngine,
        settings: Settings,
        consumer: str,
        shard: keys.Shard | None = None,
        observes_backlog: bool = True,
        on_loop: Callable[[], None] | None = None,
    ) -> None:
        self.redis = redis
        #: The stream this drain reads (a worker runs one drain per shard, side by side).
        self.shard = shard or keys.layout_for(settings).shards[0]
        self.stream = self.shard.stream
        #: Whether this drain updates the backlog gauges (one drain of a worker does, for all shards).
        self.observes_backlog = observes_backlog
        self.engine = engine
        self.settings = settings
        self.consumer = consumer
        #: Called after each loop `run` completes (the worker's heartbeat, worker.health).
        self.on_loop = on_loop
        self.stopping = asyncio.Event()
        self.stored = 0
        self._expire = redis.register_script(EXPIRE_KEYS)
        self._ack_and_delete = redis.register_script(ACK_AND_DELETE)
        self._partitions: set[date] = set()  # days whose partition is known to exist

    async def ensure_group(self) -> None:
        """Create the stream and consumer group if missing; from id 0 so no queued entry is skipped."""
        try:
            await self.redis.xgroup_create(self.stream, keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_new(self) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        """Block up to DRAIN_BLOCK_MS for up to DRAIN_BATCH_ENTRIES entries never delivered before."""
        response = await self.redis.xreadgroup(
            keys.GROUP,
            self.consumer,
            {self.stream: ">"},
            count=self.settings.drain_batch_entries,
            block=self.settings.drain_block_ms,
        )
        return list(response[0][1]) if response else []

    async def read_own_pending(self) -> list[RawEntry]:
        """Read up to DRAIN_BATCH_ENTRIES entries delivered to this consumer and not acknowledged (XREADGROUP from 0).

        After a failed read these may be entries Redis delivered whose reply never arrived (a timeout in a stall):
        nobody else would take them before RECLAIM_IDLE_MS.
        """
        response = await self.redis.xreadgroup(
            keys.GROUP, self.consumer, {self.stream: "0"}, count=self.settings.drain_batch_entries
        )
        return list(response[0][1]) if response else []

    async def reclaim_stale(self) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        """Claim entries pending longer than RECLAIM_IDLE_MS at other (dead or stuck) consumers."""
        claimed: list[tuple[bytes, dict[bytes, bytes] | None]] = []
        cursor: bytes | str = "0-0"
        while len(claimed) < self.settings.drain_batch_entries:
            reply = await self.redis.xautoclaim(
                self.stream,
                keys.GROUP,
                self.consumer,
                self.settings.reclaim_idle_ms,
                start_id=cursor,
                count=self.settings.drain_batch_entries,
            )
            cursor, entries = reply[0], reply[1]
            claimed.extend(entries)
            # Redis >= 7 lists entries deleted from the stream but still pending separately: ack them.
            if len(reply) > 2 and reply[2]:
                await self.redis.xack(self.stream, keys.GROUP, *reply[2])
            if cursor in (b"0-0", "0-0"):
                break
        return claimed

    async def bury_overdelivered(self, claimed: list[RawEntry]) -> list[RawEntry]:
        """Dead-letter the claimed entries delivered more than MAX_DELIVERIES times; return the others.

        An entry that kills every worker that takes it (memory, a crash in a library) would otherwise be reclaimed
        by the next worker, and the next, for ever, while the backlog grows. The consumer group counts deliveries
        (XPENDING); past the limit the entry goes to the dead-letter stream with its JSON and the reason, and is
        acked. Its cache key keeps no TTL, so GET still finds it in Redis.
        """
        if not claimed:
            return claimed
        ids = [entry_id for entry_id, _ in claimed]
        # stream ids compare as numbers (`5-10` after `5-2`), not as bytes: a byte-wise range can run backwards
        first, last = min(ids, key=_stream_order), max(ids, key=_stream_order)
        pending = await self.redis.xpending_range(
            self.stream, keys.GROUP, min=first, max=last, count=len(ids) + 1000, consumername=self.consumer
        )
        deliveries = {item["message_id"]: int(item["times_delivered"]) for item in pending}
        limit = self.settings.max_deliveries
        over = [(entry_id, fields) for entry_id, fields in claimed if deliveries.get(entry_id, 0) > limit]
        if not over:
            return claimed
        async for part in fetched_parts(self.redis, over, self.settings.drain_batch_bytes):
            for fetched in part:
                error = f"delivered {deliveries[fetched.entry_id]} times (MAX_DELIVERIES={limit}): it may crash workers"
                await self._dead_letter(fetched.entry_id, fetched.payload or b"", error, fetched.request_id)
        buried = {entry_id for entry_id, _ in over}
        await self._ack_and_delete_all(list(buried))
        return [(entry_id, fields) for entry_id, fields in claimed if entry_id not in buried]

    async def drain_batch(self, raw: list[RawEntry], redelivered: bool = False) -> int:
        """Store a batch of stream entries, then ack them; return how many notifications were new rows.

        The batch is fetched and stored in parts of at most DRAIN_BATCH_BYTES of JSON (at least one entry each), by the
        sizes the entries declare; each part is one transaction, acknowledged when it committed, and released before the
        next part is fetched: only one part's JSON is held, raw and decoded, at a time, however large the requests and
        however many the batch holds. `redelivered` says the entries may have been stored before (reclaimed from another
        consumer), so the idempotent insert is used straight away. Python's cyclic garbage collector is paused meanwhile
        (shared/heap.py: decoded batches hold no cycles; the saving is in loadtest/RESULTS.md).
        """
        stored = 0
        with collector_paused():
            async for part in fetched_parts(self.redis, raw, self.settings.drain_batch_bytes):
                stored += await self._drain_part(part, redelivered)
        if self.on_loop is not None:  # progress: a drain working through a long reclaim is alive
            self.on_loop()
        return stored

    async def _drain_part(self, part: list[Fetched], redelivered: bool) -> int:
        """Store some stream entries in one transaction, then ack them; return how many rows were new."""
        started = time.perf_counter()
        entries: list[Entry] = []
        finished: list[bytes] = []  # entry ids to ack without storing (deleted or dead-lettered)
        for fetched in part:
            entry_id, payload, request_id = fetched.entry_id, fetched.payload, fetched.request_id
            if payload is None:
                if fetched.cache_key is not None and not redelivered:
                    # never stored, and its JSON is gone (deleted by hand, or evicted: Redis must be noeviction)
                    error = f"the request's JSON is missing from Redis (key {fetched.cache_key})"
                    await self._dead_letter(entry_id, b"", error, request_id)
                elif fetched.cache_key is not None:
                    # reclaimed: most likely stored by the consumer that died before acking, its key expired since
                    logger.warning(
                        "reclaimed entry %s of request %s has no JSON left in Redis (key %s): acked unstored",
                        entry_id.decode(),
                        request_id or "?",
                        fetched.cache_key,
                        extra={"request_id": request_id, "entry": entry_id.decode()},
                    )
                # else an entry deleted from the stream meanwhile: nothing to store
                finished.append(entry_id)
                continue
            try:
                docs = decode_entry(payload)
                cache_key = fetched.cache_key or (
                    self.shard.cache_key(str(docs[0]["service_id"]), str(docs[0]["id"])) if docs else None
                )
                # one request's ids share their millisecond: its first and last id name its day(s)
                days = {partitions.day_of(docs[0]["id"]), partitions.day_of(docs[-1]["id"])} if docs else set()
            except (ValueError, KeyError, TypeError, IndexError, OverflowError) as exc:
                await self._dead_letter(entry_id, payload, f"undecodable entry: {exc!r}", request_id)
                finished.append(entry_id)
                continue
            entries.append(Entry(entry_id, payload, docs, cache_key, request_id, days))
        stored = await self._store(entries, redelivered) if entries else 0
        await self._ack(entries, finished)
        self.stored += stored
        ROWS_STORED.inc(stored)
        notifications = sum(len(entry.docs) for entry in entries)
        DRAIN_BATCH_SIZE.observe(notifications)
        if entries:
            logger.info(
                "stored %d new of %d notifications from %d requests",
                stored,
                notifications,
                len(entries),
                extra={"request_ids": [entry.request_id for entry in entries], "consumer": self.consumer},
            )
        DRAIN_BATCH_SECONDS.observe(time.perf_counter() - started)
        return stored

    async def _store(self, entries: list[Entry], redelivered: bool) -> int:
        """Insert entries in one transaction; split the batch to isolate entries that cannot be stored."""
        try:
            return await self._insert_with_retry(entries, idempotent=redelivered)
        except PoisonError as exc:
            if len(entries) == 1:
                await self._dead_letter(entries[0].entry_id, entries[0].payload, str(exc), entries[0].request_id)
                entries[0].cache_key = None  # nothing stored: GET keeps finding it in Redis
                return 0
            middle = len(entries) // 2
            return await self._store(entries[:middle], True) + await self._store(entries[middle:], True)

    async def _copy(self, entries: list[Entry]) -> int:
        docs = [doc for entry in entries for doc in entry.docs]
        if not docs:
            return 0
        async with self.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            return await queries.copy_notifications(raw, docs)

    async def _insert(self, entries: list[Entry]) -> int:
        payloads = [entry.payload.decode() for entry in entries if entry.docs]
        if not payloads:
            return 0
        async with self.engine.begin() as conn:
            return await queries.insert_notifications(conn, payloads)

    async def _insert_with_retry(self, entries: list[Entry], idempotent: bool) -> int:
        """Store entries, retrying outages with capped backoff; raise PoisonError for data Postgres refuses.

        The partitions of the entries' days are made first if missing (a backlog older than the partitions made
        ahead, a clock step, a day retention dropped while it was queued): an accepted notification is always
        stored, whatever its day and whatever this process's clock says.
        """
        delay = 0.1
        missing_partition_retries = MISSING_PARTITION_RETRIES
        days = set().union(*(entry.days for entry in entries))
        while True:
            try:
                await partitions.ensure(self.engine, days, self._partitions)
                if not idempotent:
                    try:
                        return await self._copy(entries)
                    except Exception as exc:
                        if _is_missing_partition(exc):  # the insert would fail the same way: make it, COPY again
                            raise
                        # stored before, bad data or an outage: the idempotent insert tells which
                        idempotent = True
                return await self._insert(entries)
            except Exception as exc:
                if _is_missing_partition(exc) and missing_partition_retries > 0:
                    missing_partition_retries -= 1
                    self._partitions.clear()  # maintenance dropped one we knew of: look again
                    continue
                if failures.refused_data(exc):
                    raise PoisonError(str(getattr(exc, "orig", exc))) from exc
                # an outage, or a failure neither an outage nor the data's: keep the batch and retry, never drop it
                STORAGE_ERRORS.inc()
                if self.stopping.is_set():
                    raise
                why = "Postgres unreachable" if failures.database_unreachable(exc) else "storing failed"
                logger.warning("%s for %d entries (%r); retrying in %.1fs", why, len(entries), exc, delay)
                if self.on_loop is not None:
                    # alive, and doing what it should: a restart would not end the outage, but each one hands the
                    # batch over again and counts a delivery, until MAX_DELIVERIES dead-letters good entries
                    self.on_loop()
                await self._linger(delay)  # a stop ends the wait: the batch stays pending for the next worker
                delay = min(delay * 2, self.settings.db_retry_max_seconds)

    async def _ack(self, stored: list[Entry], finished: list[bytes]) -> None:
        """Give stored notifications' cache keys their TTL, then ack and delete the entries.

        In that order: a worker dying in between leaves the entries pending, and their redelivery sets the
        TTLs again, so no cache key is left without one.
        """
        entry_ids = [entry.entry_id for entry in stored] + finished
        if not entry_ids:
            return
        cache_keys = [entry.cache_key for entry in stored if entry.cache_key]
        for start in range(0, len(cache_keys), EXPIRE_CHUNK):
            await self._expire(keys=cache_keys[start : start + EXPIRE_CHUNK], args=[self.settings.cache_ttl_seconds])
        await self._ack_and_delete_all(entry_ids)

    async def _ack_and_delete_all(self, entry_ids: list[bytes]) -> None:
        """Acknowledge and delete entries of this drain's stream, ACK_CHUNK per (atomic) script call."""
        for start in range(0, len(entry_ids), ACK_CHUNK):
            await self._ack_and_delete(keys=[self.stream], args=[keys.GROUP, *entry_ids[start : start + ACK_CHUNK]])

    async def _dead_letter(self, entry_id: bytes, payload: bytes, error: str, request_id: str = "") -> None:
        logger.error(
            "dead-lettering entry %s of request %s: %s",
            entry_id.decode(),
            request_id or "?",
            error,
            extra={"request_id": request_id, "entry": entry_id.decode()},
        )
        DEAD_LETTERS.inc()
        await self.redis.xadd(
            self.shard.dead_letters,
            {
                keys.DEAD_LETTER_ENTRY_FIELD: entry_id,
                keys.DEAD_LETTER_PAYLOAD_FIELD: payload,
                keys.DEAD_LETTER_ERROR_FIELD: error,
                keys.DEAD_LETTER_CONSUMER_FIELD: self.consumer,
                keys.DEAD_LETTER_REQUEST_ID_FIELD: request_id,
            },
        )

    async def _pause(self, exc: BaseException, delay: float) -> None:
        logger.warning("redis unavailable (%r); retrying in %.1fs", exc, delay)
        await asyncio.sleep(delay)

    async def _retry_later(self, step: Callable[[], Awaitable[None]], exc: BaseException, delay: float) -> None:
        try:
            await step()
        except (RedisError, OSError):
            await self._pause(exc, delay)

    async def observe_backlog(self) -> None:
        """Update the backlog gauges: stream length and the age of its oldest entry."""
        if not self.observes_backlog:
            return
        backlog = await read_backlog(self.redis, keys.layout_for(self.settings))
        BACKLOG.set(backlog.entries)
        for shard, entries in enumerate(backlog.by_shard):
            BACKLOG_BY_SHARD.labels(str(shard)).set(entries)
        OLDEST_PENDING_AGE.set(backlog.oldest_age_seconds)

    async def _drain_redelivered(self, read: Callable[[], Awaitable[list[RawEntry]]], logged: str) -> None:
        """Drain what `read` gives (entries delivered before) until it gives nothing; over-delivered ones buried."""
        while entries := await read():
            logger.info(logged, len(entries))
            await self.drain_batch(await self.bury_overdelivered(entries), redelivered=True)

    async def _linger(self, seconds: float) -> None:
        """After a part-full batch, let new entries gather for `seconds` (unless stopping).

        A worker that keeps up reads at most once per DRAIN_LINGER_MS: each batch costs a transaction and a few
        Redis round trips whatever its size, and without the pause a worker keeping up with a moderate rate
        stores many tiny batches and spends a core on it. A worker whose batches take longer than that to store
        never waits.
        """
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), seconds)

    async def run(self) -> None:
        """Drain until `stopping` is set: reclaim stale entries now and then, otherwise read new ones."""
        loop = asyncio.get_running_loop()
        next_reclaim = next_observation = 0.0
        delay = 0.1
        # after any error: a read whose reply was lost (a timeout) left entries pending at this consumer, which
        # XAUTOCLAIM would give back only after RECLAIM_IDLE_MS; they are read again (from 0) before anything new
        reread_own = False
        logger.info("drain %s started", self.consumer)
        # No XGROUP CREATE up front: the first read answers NOGROUP if the group is missing, and that creates it.
        while not self.stopping.is_set():
            try:
                if reread_own:
                    await self._drain_redelivered(
                        self.read_own_pending, "read again %d entries left pending at this consumer by an error"
                    )
                    reread_own = False
                if loop.time() >= next_reclaim:
                    next_reclaim = loop.time() + self.settings.reclaim_interval_seconds
                    await self._drain_redelivered(self.reclaim_stale, "reclaimed %d stale entries")
                if loop.time() >= next_observation:
                    next_observation = loop.time() + 1.0
                    await self.observe_backlog()
                read_at = loop.time()
                if batch := await self.read_new():
                    await self.drain_batch(batch)  # which beats the heartbeat
                    if len(batch) < self.settings.drain_batch_entries:
                        await self._linger(read_at + self.settings.drain_linger_ms / 1000 - loop.time())
                elif self.on_loop is not None:  # a loop that found nothing new is complete too
                    self.on_loop()
                delay = 0.1
            except ResponseError as exc:
                reread_own = True
                if "NOGROUP" in str(exc):  # Redis lost the group (flushed, or restarted without AOF)
                    await self._retry_later(self.ensure_group, exc, delay)
                else:  # LOADING, MISCONF, READONLY, OOM…: Redis cannot serve now, the entries wait
                    await self._pause(exc, delay)
                delay = min(delay * 2, self.settings.db_retry_max_seconds)
            except (RedisError, OSError) as exc:
                reread_own = True
                if self.stopping.is_set():
                    break
                await self._pause(exc, delay)
                delay = min(delay * 2, self.settings.db_retry_max_seconds)
            except Exception:  # a bug must not end the drain: whatever it was, the entries stay pending
                reread_own = True
                if self.stopping.is_set():  # a store given up on because the worker stops (its batch stays pending)
                    break
                logger.exception("drain iteration failed; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.db_retry_max_seconds)
        logger.info("drain %s stopped after storing %d notifications", self.consumer, self.stored)
