"""Per-service rate limits on the write path: which limit applies, and refusing early what Redis would refuse.

The tokens are counted in Redis by the group-commit script, so a limit holds across API processes. Here a
service's limit (its own, else RATE_LIMIT_PER_MINUTE) is kept in-process for AUTH_CACHE_SECONDS, with how many tokens
Redis last said its bucket held: a request that cannot fit before the bucket refills is refused without a round
trip, and this never refuses what Redis would have allowed (the bucket holds at most what it held then plus what it
gained since). What Redis said is trusted no longer than the limit it was counted under.
"""

import logging
import math
import time
from uuid import UUID

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from api.cache import TtlCache
from api.flush import RateState
from shared import failures, ratelimits

logger = logging.getLogger(__name__)


def rate_headers(state: RateState) -> list[tuple[bytes, bytes]]:
    """Return the RateLimit-* headers (draft-ietf-httpapi-ratelimit-headers) for a write's bucket state."""
    return [
        (b"ratelimit-limit", str(state.limit).encode()),
        (b"ratelimit-remaining", str(state.remaining).encode()),
        # allowed: seconds until the bucket is full again; refused: until it holds the request's cost
        (b"ratelimit-reset", str(math.ceil(state.wait_ms / 1000)).encode()),
        (b"ratelimit-policy", f"{state.limit};w=60".encode()),
    ]


class RateLimiter:
    """The rate limits of the services this process writes for, and their known refusals."""

    def __init__(
        self, engine: AsyncEngine, redis: Redis, default_per_minute: int, ttl_seconds: float, max_entries: int = 10_000
    ) -> None:
        self._engine = engine
        self._redis = redis
        self.default = default_per_minute
        self.ttl = ttl_seconds
        self._limits = TtlCache[int, int](ttl_seconds, max_entries)  # UUID.int (hashed in C) → limit
        #: (service, shard) → (monotonic time, the most tokens its bucket can have held then, capacity, refill/min),
        #: trusted as long as the limit it was counted under is kept
        self._known = TtlCache[tuple[int, int], tuple[float, float, int, float]](ttl_seconds, max_entries)

    def known_limit(self, service_id: UUID) -> int | None:
        """Return the service's limit if this process knows it (for AUTH_CACHE_SECONDS), else None: no await."""
        return self._limits.get(service_id.int)[1]

    async def limit_for(self, service_id: UUID) -> int:
        """Return the service's limit in notifications per minute (0: unlimited), asking Redis if not known."""
        known = self.known_limit(service_id)
        if known is not None:
            return known
        try:
            own = await ratelimits.own_rate_limit(self._engine, self._redis, service_id)
        except Exception as exc:
            if not failures.database_unreachable(exc):
                raise
            # Redis lost the limits and Postgres cannot give them: accept on the default (writes never wait on Postgres)
            logger.warning("rate limits unknown (%r): the default applies to service %s for now", exc, service_id)
            own = None
        limit = self.default if own is None else own
        self._limits.put(service_id.int, limit)
        return limit

    def knows(self, service_id: UUID, shard: int = 0) -> bool:
        """Whether Redis told this process lately how many tokens the service's bucket in `shard` holds."""
        return bool(self._known) and self._known.get((service_id.int, shard))[0]

    def refused_before(self, service_id: UUID, cost: int, shard: int = 0) -> RateState | None:
        """Return the state to refuse with if the service's bucket cannot hold `cost` tokens now, else None.

        Known from Redis's last answer for the service: the bucket held at most what that answer said, plus what it
        gained since the write was handed over (Redis counted it later); other processes only take tokens away.
        """
        if not self._known:  # no rate-limited service has written through this process lately
            return None
        _, known = self._known.get((service_id.int, shard))
        if known is None:  # not known, or no longer: the limit it was counted under may have changed
            # forgotten, so that once no rate-limited service writes here the check above costs nothing again
            self._known.forget((service_id.int, shard))
            return None
        at, tokens, limit, refill_per_minute = known
        per_second = refill_per_minute / 60
        most = tokens + (time.monotonic() - at) * per_second
        if most >= limit:  # the bucket may be full again: nothing more is known
            self._known.forget((service_id.int, shard))
            return None
        if cost <= most or cost > limit:  # it fits, or it never will: the write path's 413 says so
            return None
        wait_ms = math.ceil((cost - most) / per_second * 1000)
        return RateState(False, limit, max(0, math.floor(most * 1000)), wait_ms, refill_per_minute)

    def note(self, state: RateState, service_id: UUID, handed_at: float, shard: int = 0) -> None:
        """Remember what Redis answered for a write of the service handed to the writer at monotonic `handed_at`."""
        most = (state.milli_tokens + 1) / 1000
        until = self._limits.expiry(service_id.int) or handed_at + self.ttl
        self._known.put((service_id.int, shard), (handed_at, most, state.limit, state.refill_per_minute), until)
