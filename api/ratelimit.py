"""Per-service rate limits on the write path: which limit applies, and refusing early what Redis would refuse.

The tokens are counted in Redis by the group-commit script (`api.writer`), so the limit holds across API
processes. This module gives the write path the limit of a service (its own, else RATE_LIMIT_PER_MINUTE), kept
in-process for AUTH_CACHE_SECONDS, and remembers when Redis last refused a service: until the bucket can have
refilled, a request of the same cost or more is refused here without a round trip (the bucket cannot hold more
than it held then plus what it gained since, so this never refuses what Redis would have allowed). A service
flooding past its limit thus costs the other services neither Redis time nor the API's flushes.
"""

import logging
import math
import time
from collections import OrderedDict
from uuid import UUID

from redis.asyncio import Redis
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from api.writer import RateState
from shared import ratelimits

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


class RateLimits:
    """The rate limits of the services this process writes for, and their known refusals."""

    def __init__(
        self, engine: AsyncEngine, redis: Redis, default_per_minute: int, ttl_seconds: float, max_entries: int = 10_000
    ) -> None:
        self._engine = engine
        self._redis = redis
        self.default = default_per_minute
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._limits: OrderedDict[UUID, tuple[int, float]] = OrderedDict()
        #: service → (monotonic time before which it is refused, the smallest cost refused, the state then)
        self._refused: dict[UUID, tuple[float, int, RateState]] = {}

    async def limit_for(self, service_id: UUID) -> int:
        """Return the service's limit in notifications per minute (0: unlimited)."""
        now = time.monotonic()
        known = self._limits.get(service_id)
        if known is not None and known[1] >= now:
            return known[0]
        try:
            own = await ratelimits.own_rate_limit(self._engine, self._redis, service_id)
        except SQLAlchemyError as exc:  # Redis lost the limits and Postgres cannot give them: accept on the default
            logger.warning("rate limits unknown (%r): the default applies to service %s for now", exc, service_id)
            own = None
        limit = self.default if own is None else own
        if self.ttl > 0:
            self._limits[service_id] = (limit, now + self.ttl)
            self._limits.move_to_end(service_id)
            while len(self._limits) > self.max_entries:
                self._limits.popitem(last=False)
        return limit

    def refused_before(self, service_id: UUID, cost: int) -> RateState | None:
        """Return the state to refuse with if Redis refused this service lately and cannot allow `cost` yet."""
        refused = self._refused.get(service_id)
        if refused is None:
            return None
        until, smallest_cost, state = refused
        left = until - time.monotonic()
        if left <= 0:
            del self._refused[service_id]
            return None
        if cost < smallest_cost:
            return None
        return RateState(False, state.limit, state.remaining, math.ceil(left * 1000))

    def note(self, service_id: UUID, cost: int, state: RateState, sent_at: float) -> None:
        """Remember a refusal from Redis of a write handed to the writer at monotonic `sent_at`.

        Redis counted it later than `sent_at`, so the bucket cannot hold `cost` tokens before `sent_at` plus the wait.
        """
        if state.allowed:
            self._refused.pop(service_id, None)
        else:
            self._refused[service_id] = (sent_at + state.wait_ms / 1000, cost, state)
            if len(self._refused) > self.max_entries:
                self._refused.pop(next(iter(self._refused)))
