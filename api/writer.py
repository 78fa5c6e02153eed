"""The group commit: the Redis writes of concurrent requests go out together, one script call per shard.

`RedisWriter.write` queues a request's write and returns once Redis acknowledged the `FLUSH` call that carried it
(`api.flush`; with AOF `appendfsync always`, after the fsync that covers it), and with REDIS_WAIT_REPLICAS once
that many replicas have it. While one flush is in flight the next batch gathers, up to `max_flushes_in_flight`
sent at once. A write is refused at once rather than left waiting: while the streams hold MAX_BACKLOG_ENTRIES,
while Redis is known not to answer for the shard (nothing was sent: a retry is safe; it is probed again every
PROBE_INTERVAL_SECONDS), or while a write with the same Idempotency-Key is in flight in this process. A flush Redis
did not confirm (a timeout, a lost connection) leaves its writes' outcome unknown, and says so.
"""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.errors import (
    BacklogFullError,
    IdempotencyKeyInFlightError,
    RedisUnresponsiveError,
    ReplicasUnconfirmedError,
    WriteOutcomeUnknownError,
)
from api.flush import FLUSH, Idempotency, RateLimit, RateState, Write, Written, pack, parse, reply_code
from shared import keys
from shared.metrics import BACKLOG
from shared.redis_client import is_cluster, node_client

logger = logging.getLogger(__name__)

#: How old the known backlog length may be before a refused write reads it again.
BACKLOG_RECHECK_SECONDS = 1.0
#: While Redis is not answering, how often the writer PINGs it to find out whether it answers again.
PROBE_INTERVAL_SECONDS = 0.5
#: Error replies of a cluster that did not run the script (the slot is elsewhere or not served yet): a retry is safe.
NOT_APPLIED_REPLIES = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN")
#: Errors after which nobody can tell whether Redis applied a flush, and that suggest it is not answering.
UNRESPONSIVE_ERRORS = (RedisTimeoutError, RedisConnectionError, OSError)


@dataclass(slots=True)
class _PendingWrite(Write):
    #: Resolved with how the write went once Redis answered.
    done: asyncio.Future[Written] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class _ShardQueue:
    """The writes waiting for one shard's stream, and its flushers."""

    def __init__(self, shard: keys.Shard) -> None:
        self.shard = shard
        self.queue: list[_PendingWrite] = []
        self.in_flight = 0  # flushers started and not yet returned (a task's done callbacks run later)
        self.flusher_starting = False
        self.backlog = 0  # the stream's length, as the last flush or XLEN found it
        self.probe: asyncio.Task[None] | None = None  # running while Redis is known not to answer for this shard


class RedisWriter:
    """Merges the Redis writes of concurrent requests into one script call per shard and round trip."""

    def __init__(
        self,
        redis: Redis,
        max_backlog: int,
        max_requests_per_flush: int = 256,
        max_flushes_in_flight: int = 2,
        layout: keys.Layout | None = None,
        wait_replicas: int = 0,
        timeout_seconds: float = 5.0,
    ) -> None:
        self._redis = redis
        #: REDIS_WAIT_REPLICAS: replicas that must confirm a flush before its requests are answered.
        self.wait_replicas = wait_replicas
        self.timeout_seconds = timeout_seconds
        #: How long WAIT waits: half the socket's REDIS_TIMEOUT_SECONDS, so that its answer arrives well within it.
        self.wait_timeout_ms = max(1, int(timeout_seconds * 1000 / 2))
        self._loaded_on: set[int] = set()  # id() of the clients the flush script was loaded through
        self._node_clients: dict[str, Redis] = {}
        self._flush = redis.register_script(FLUSH)
        self._max = max_requests_per_flush
        self._max_in_flight = max_flushes_in_flight
        self.layout = layout or keys.layout()
        self._shards = [_ShardQueue(shard) for shard in self.layout.shards]
        self._flushers: set[asyncio.Task[None]] = set()
        self.max_backlog = max_backlog
        #: Requests in the streams not yet stored, as last known (all shards).
        self.backlog = 0
        self._backlog_read_at = 0.0
        self._recheck_lock = asyncio.Lock()
        self._keys_in_flight: set[str] = set()  # idempotency record keys of the writes not yet answered

    async def _admit(self) -> None:
        """Refuse new writes while the streams hold MAX_BACKLOG_ENTRIES or more."""
        if self.backlog < self.max_backlog:
            return
        async with self._recheck_lock:  # one XLEN per shard a second, however many requests are refused
            if time.monotonic() - self._backlog_read_at > BACKLOG_RECHECK_SECONDS:
                lengths = await asyncio.gather(*(self._redis.xlen(queue.shard.stream) for queue in self._shards))
                for queue, length in zip(self._shards, lengths, strict=True):
                    self._set_backlog(queue, length)
        if self.backlog >= self.max_backlog:
            raise BacklogFullError(
                f"the queue holds {self.backlog} requests not yet stored (limit {self.max_backlog}); retry later"
            )

    def _set_backlog(self, queue: _ShardQueue, length: int) -> None:
        self.backlog += length - queue.backlog
        queue.backlog = length
        BACKLOG.set(self.backlog)
        self._backlog_read_at = time.monotonic()

    async def write(
        self,
        entry: bytes,
        cache_key: str,
        request_id: str = "",
        idempotency: Idempotency | None = None,
        rate_limit: RateLimit | None = None,
        shard: int = 0,
    ) -> Written:
        """Keep `entry` under `cache_key` and add an entry naming it to the shard's stream; return once acknowledged.

        `cache_key` (and the keys of `idempotency` and `rate_limit`) must be keys of shard `shard`. `request_id` is
        stored with the entry, for the worker's logs. With `idempotency`, its record is kept in the same script
        call, unless a record under its key exists already: then nothing is written and that record is returned
        (`Written.record`). With `rate_limit`, the same call takes the request's tokens from its bucket, or writes
        nothing when there are too few (`Written.rate.allowed` is False).

        Raises:
            IdempotencyKeyInFlightError: a write with the same idempotency key is still in flight in this process.
            RedisUnresponsiveError: Redis is known not to answer for this shard; nothing was sent.
            WriteOutcomeUnknownError: Redis did not confirm the flush that carried the write (timeout, lost
                connection); it may have been applied.
            BacklogFullError: the streams' backlog is at MAX_BACKLOG_ENTRIES.
            redis.exceptions.RedisError: Redis refused the write.
        """
        queue = self._shards[shard]
        if queue.probe is not None:
            raise RedisUnresponsiveError()
        await self._admit()
        if idempotency is not None:
            if idempotency.key in self._keys_in_flight:
                raise IdempotencyKeyInFlightError()
            # held until the flush carrying it is answered, even if this request goes away before that
            self._keys_in_flight.add(idempotency.key)
        return await self._enqueue(queue, _PendingWrite(entry, cache_key, request_id, idempotency, rate_limit))

    async def charge(self, rate_limit: RateLimit, shard: int = 0) -> RateState:
        """Take `rate_limit.cost` tokens from the service's bucket in `shard`, with the writes of the same flush.

        For work that is stored by another path than the streams (a job's rows): nothing is kept or queued, so the
        streams' backlog does not refuse it. Returns the bucket's state (`allowed` False: nothing was taken).

        Raises:
            RedisUnresponsiveError, WriteOutcomeUnknownError, redis.exceptions.RedisError: as `write`.
        """
        queue = self._shards[shard]
        if queue.probe is not None:
            raise RedisUnresponsiveError()
        # an empty entry: FLUSH takes the tokens and keeps and queues nothing (the bucket key stands in for a cache key)
        written = await self._enqueue(queue, _PendingWrite(b"", rate_limit.bucket_key, "", None, rate_limit))
        assert written.rate is not None
        return written.rate

    async def _enqueue(self, queue: _ShardQueue, pending: _PendingWrite) -> Written:
        """Hand a write to its shard's next flush (starting a flusher if none is starting) and await its outcome."""
        queue.queue.append(pending)
        if not queue.flusher_starting and queue.in_flight < self._max_in_flight:
            self._start_flusher(queue)
        # Cancelling this wait cancels only this request's future, never the flush that other requests share
        return await pending.done

    def _start_flusher(self, queue: _ShardQueue) -> None:
        queue.flusher_starting = True  # it takes everything queued until it runs
        queue.in_flight += 1
        flusher = asyncio.create_task(self._flush_all(queue))
        self._flushers.add(flusher)
        flusher.add_done_callback(self._flushers.discard)

    async def _flush_all(self, queue: _ShardQueue) -> None:
        queue.flusher_starting = False
        try:
            await self._flush_queue(queue)
        finally:
            queue.in_flight -= 1  # in the same step that found the queue empty: no write can slip in between

    async def _flush_queue(self, queue: _ShardQueue) -> None:
        while queue.queue:
            batch, queue.queue = queue.queue[: self._max], queue.queue[self._max :]
            keys_, args = pack(queue.shard.stream, batch)
            try:
                reply, unconfirmed = await self._send(queue.shard, keys_, args)
            except Exception as exc:  # every waiter learns the outcome, whatever it was
                failure: BaseException = exc
                moved = False
                if isinstance(exc, UNRESPONSIVE_ERRORS):
                    failure = WriteOutcomeUnknownError()
                    failure.__cause__ = exc
                    self._redis_unresponsive(queue, exc)
                elif isinstance(exc, ResponseError) and reply_code(exc) in NOT_APPLIED_REPLIES:
                    # not applied: the slot is elsewhere now (a failover) or the cluster cannot serve it yet
                    failure = RedisUnresponsiveError("the Redis Cluster is failing over: nothing was queued; retry")
                    failure.__cause__ = exc
                    moved = True
                for item in batch:
                    self._settle(item, failure)
                if moved:  # after the waiters are answered: they need not wait for the new slot map
                    await self._reload_slots()
            else:
                length, outcomes = parse(batch, reply)
                self._set_backlog(queue, length)
                for item, outcome in zip(batch, outcomes, strict=True):
                    # with `unconfirmed`, the writes the script queued get it (replays and refusals are told as usual)
                    self._settle(item, unconfirmed if unconfirmed is not None and outcome.queued else outcome)

    async def _send(
        self, shard: keys.Shard, keys_: list[str], args: list[bytes | str]
    ) -> tuple[list[Any], ReplicasUnconfirmedError | None]:
        """Run the flush script; with REDIS_WAIT_REPLICAS, then WAIT on the same connection for the replicas.

        Returns the script's reply, and the error for the requests it queued when fewer replicas than asked
        confirmed the write in time (None when they did, or when none are asked for).
        """
        # On a cluster the flush goes to the node that holds the shard's slot, through a client of that node only:
        # the cluster client would send it again after a timeout (the script may have run), and WAIT counts the
        # writes of its own connection. A node that no longer holds the slot answers MOVED: nothing ran.
        client = self._node_client(shard) if is_cluster(self._redis) else self._redis
        if not self.wait_replicas:
            return cast(list[Any], await self._flush(keys=keys_, args=args, client=client)), None
        if id(client) not in self._loaded_on:  # once per client: a NOSCRIPT would also cost the WAIT's whole wait
            await client.script_load(FLUSH)
            self._loaded_on.add(id(client))
        for attempt in (1, 2):
            try:
                # EVALSHA by hand: a Script in a pipeline costs a SCRIPT EXISTS round trip before every flush
                async with client.pipeline(transaction=False) as pipe:
                    pipe.execute_command("EVALSHA", self._flush.sha, len(keys_), *keys_, *args)
                    pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
                    reply, acknowledged = await pipe.execute()
                break
            except NoScriptError:  # the script did not run (Redis restarted since): load it again, once
                if attempt == 2:
                    raise
                await client.script_load(FLUSH)
        if acknowledged >= self.wait_replicas:
            return cast(list[Any], reply), None
        return cast(list[Any], reply), ReplicasUnconfirmedError(
            f"Redis applied the write, but {acknowledged} of the REDIS_WAIT_REPLICAS={self.wait_replicas} "
            "replicas confirmed it within half of REDIS_TIMEOUT_SECONDS: a failover now could lose it"
        )

    def _node_client(self, shard: keys.Shard) -> Redis:
        """A plain client of the cluster node that holds the shard's slot now (one per node, kept)."""
        node = cast(RedisCluster, self._redis).get_node_from_key(shard.stream)
        if node is None:
            raise RedisConnectionError(f"no node of the cluster holds {shard.stream}")
        client = self._node_clients.get(node.name)
        if client is None:
            client = self._node_clients[node.name] = node_client(node, self.timeout_seconds)
        return client

    async def _reload_slots(self) -> None:
        if is_cluster(self._redis):
            with contextlib.suppress(Exception):  # the next command tries again anyway
                await cast(RedisCluster, self._redis).nodes_manager.initialize()

    def _settle(self, item: _PendingWrite, outcome: Written | BaseException) -> None:
        """Tell a write's waiter (if still there) how its flush went, and free its idempotency key."""
        if item.idempotency is not None:
            self._keys_in_flight.discard(item.idempotency.key)
        if item.done.done():
            return
        if isinstance(outcome, BaseException):
            item.done.set_exception(outcome)
        else:
            item.done.set_result(outcome)

    def _redis_unresponsive(self, queue: _ShardQueue, exc: BaseException) -> None:
        """Fail the shard's queued writes at once and refuse new ones until Redis answers for the shard again."""
        queued, queue.queue = queue.queue, []
        for item in queued:
            self._settle(item, RedisUnresponsiveError())
        if queue.probe is None:
            logger.warning(
                "Redis is not answering for %s (%r): its writes fail at once until it answers again",
                queue.shard.stream,
                exc,
            )
            queue.probe = asyncio.create_task(self._wait_for_redis(queue))

    async def _wait_for_redis(self, queue: _ShardQueue) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
            try:  # a keyed command: on a cluster it asks the node that holds the shard
                await self._redis.exists(queue.shard.stream)
            except Exception:  # noqa: S112 - still not answering: try again
                continue
            logger.warning("Redis answers again for %s: its writes resume", queue.shard.stream)
            queue.probe = None
            return

    async def close(self) -> None:
        """Wait for the writes already queued to finish."""
        while any(queue.queue for queue in self._shards) or self._flushers:
            for queue in self._shards:
                if queue.queue and not queue.in_flight:
                    self._start_flusher(queue)
            await asyncio.gather(*self._flushers, return_exceptions=True)
        for queue in self._shards:
            if queue.probe is not None:
                queue.probe.cancel()
        for client in self._node_clients.values():
            await client.aclose()
