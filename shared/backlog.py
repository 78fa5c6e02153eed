"""How far the drain is behind, read from the streams (all shards) in one pipeline: for readiness and worker gauges."""

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
    #: Requests waiting in each shard's stream, in shard order.
    by_shard: tuple[int, ...] = ()


def entry_age_seconds(entry_id: bytes) -> float:
    """Age of a stream entry, from its id (`<milliseconds>-<sequence>`)."""
    return max(0.0, time.time() - int(entry_id.split(b"-", 1)[0]) / 1000)


async def read_backlog(redis: Redis, layout: keys.Layout | None = None) -> Backlog:
    """Read the backlog figures of every shard (XLEN, the first entry, the dead-letter XLEN) in one pipeline.

    The entries and dead letters of all shards add up; the oldest entry is the oldest of any shard.
    """
    shards = (layout or keys.layout()).shards
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.xlen(shard.stream)
            pipe.xrange(shard.stream, count=1)
            pipe.xlen(shard.dead_letters)
        replies = await pipe.execute()
    entries = sum(replies[0::3])
    oldest = [first[0][0] for first in replies[1::3] if first]
    age = max((entry_age_seconds(entry_id) for entry_id in oldest), default=0.0)
    return Backlog(entries, age, sum(replies[2::3]), tuple(replies[0::3]))
