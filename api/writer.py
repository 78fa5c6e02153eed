"""Group commit of the write path: concurrent requests' Redis writes go out as one MULTI/EXEC round trip.

Each accepted request hands its stream entry and its cache key to `RedisWriter.write` and waits. One flusher
task takes everything queued so far, sends it as one transaction (XADD + SET per request, the same bytes for
both) and wakes the requests when Redis acknowledged it; requests that arrive meanwhile form the next batch. A
request gets its 201 only after Redis acknowledged its write (with AOF `appendfsync always`, after the fsync
that covers it).

Backpressure rides along: every flush also reads the stream's length (XLEN) in the same round trip. While that
backlog is at MAX_BACKLOG_ENTRIES, `write` refuses new work with `BacklogFullError` (a 503), re-reading the length
at most once a second, so writes resume by themselves as the workers drain the stream.
"""

import asyncio
import time
from dataclasses import dataclass, field

from redis.asyncio import Redis

from api.errors import BacklogFullError
from shared import keys
from shared.metrics import BACKLOG

#: How old the known backlog length may be before a refused write reads it again.
BACKLOG_RECHECK_SECONDS = 1.0


@dataclass(slots=True)
class _PendingWrite:
    entry: bytes
    cache_key: str
    request_id: str
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class RedisWriter:
    """Merges the Redis writes of concurrent requests into one pipeline per round trip."""

    def __init__(self, redis: Redis, max_backlog: int, max_requests_per_flush: int = 256) -> None:
        self._redis = redis
        self._max = max_requests_per_flush
        self._queue: list[_PendingWrite] = []
        self._flusher: asyncio.Task[None] | None = None
        self.max_backlog = max_backlog
        self.backlog = 0
        self._backlog_read_at = 0.0
        self._recheck_lock = asyncio.Lock()

    async def _admit(self) -> None:
        """Refuse new writes while the stream holds MAX_BACKLOG_ENTRIES or more."""
        if self.backlog < self.max_backlog:
            return
        async with self._recheck_lock:  # one XLEN a second, however many requests are refused
            if time.monotonic() - self._backlog_read_at > BACKLOG_RECHECK_SECONDS:
                self._set_backlog(await self._redis.xlen(keys.STREAM))
        if self.backlog >= self.max_backlog:
            raise BacklogFullError(
                f"the queue holds {self.backlog} requests not yet stored (limit {self.max_backlog}); retry later"
            )

    def _set_backlog(self, length: int) -> None:
        self.backlog = length
        BACKLOG.set(length)
        self._backlog_read_at = time.monotonic()

    async def write(self, entry: bytes, cache_key: str, request_id: str = "") -> None:
        """Add one stream entry and cache it under `cache_key`; return once Redis acknowledged both.

        `request_id` is stored with the entry, for the worker's logs.

        Raises:
            BacklogFullError: the stream's backlog is at MAX_BACKLOG_ENTRIES.
            redis.exceptions.RedisError: Redis refused the write or could not be reached.
        """
        await self._admit()
        pending = _PendingWrite(entry, cache_key, request_id)
        self._queue.append(pending)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_all())
        # shield: a client that disconnects must not cancel a write that other requests share
        await asyncio.shield(pending.done)

    async def _flush_all(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self._max], self._queue[self._max :]
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    for item in batch:
                        pipe.xadd(keys.STREAM, {keys.STREAM_FIELD: item.entry, keys.REQUEST_ID_FIELD: item.request_id})
                        pipe.set(item.cache_key, item.entry)
                    pipe.xlen(keys.STREAM)
                    results = await pipe.execute()
                self._set_backlog(results[-1])
            except Exception as exc:  # every waiter learns the outcome, whatever it was
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
            else:
                for item in batch:
                    if not item.done.done():
                        item.done.set_result(None)

    async def close(self) -> None:
        """Wait for the writes already queued to finish."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
