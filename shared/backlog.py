"""How far the drain is behind, read from the streams in one round trip: for readiness and the worker's gauges."""

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from shared import keys


@dataclass(frozen=True)
class Backlog:
    """Requests waiting in the stream, the age of the oldest, and the dead letters."""

    entries: int
    oldest_age_seconds: float
    dead_letters: int


def entry_age_seconds(entry_id: bytes) -> float:
    """Age of a stream entry, from its id (`<milliseconds>-<sequence>`)."""
    return max(0.0, time.time() - int(entry_id.split(b"-", 1)[0]) / 1000)


async def read_backlog(redis: Redis) -> Backlog:
    """Read the backlog figures (XLEN, the first entry, the dead-letter XLEN) in one pipeline."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xlen(keys.STREAM)
        pipe.xrange(keys.STREAM, count=1)
        pipe.xlen(keys.DEAD_LETTER_STREAM)
        entries, oldest, dead = await pipe.execute()
    return Backlog(entries, entry_age_seconds(oldest[0][0]) if oldest else 0.0, dead)
