"""The dead-letter streams (one per shard): entries the drain could not decode or store, with their error.

`list_dead_letters` shows them; `replay` puts their payloads back on their stream (after the cause was fixed,
for instance a migration that was missing) and removes them from the dead-letter stream, atomically per entry.
"""

from dataclasses import dataclass

from redis.asyncio import Redis

from shared import keys


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered stream entry."""

    id: str
    entry: str
    error: str
    payload: bytes


async def list_dead_letters(redis: Redis, count: int = 100, layout: keys.Layout | None = None) -> list[DeadLetter]:
    """Return up to `count` dead letters of each shard, oldest first per shard."""
    return [
        DeadLetter(
            entry_id.decode(),
            fields.get(keys.DEAD_LETTER_ENTRY_FIELD, b"").decode(),
            fields.get(keys.DEAD_LETTER_ERROR_FIELD, b"").decode(errors="replace"),
            fields.get(keys.DEAD_LETTER_PAYLOAD_FIELD, b""),
        )
        for shard in (layout or keys.layout()).shards
        for entry_id, fields in await redis.xrange(shard.dead_letters, count=count)
    ]


# Move dead letter ARGV[1] from KEYS[2] back to the stream KEYS[1] (payload ARGV[2], request id ARGV[3]), atomically
# (one shard: both keys share its hash tag); a letter another replay moved already is not queued again.
MOVE_BACK = f"""
if redis.call('XDEL', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[1], '*', '{keys.STREAM_FIELD.decode()}', ARGV[2], '{keys.REQUEST_ID_FIELD.decode()}', ARGV[3])
return 1
"""


async def replay(redis: Redis, ids: list[str] | None = None, layout: keys.Layout | None = None) -> int:
    """Move dead letters (the given ids, or all) back to their shard's stream; return how many moved."""
    move_back = redis.register_script(MOVE_BACK)
    moved = 0
    for shard in (layout or keys.layout()).shards:
        if ids is None:
            entries = await redis.xrange(shard.dead_letters)
        else:
            entries = [
                entry for entry_id in ids for entry in await redis.xrange(shard.dead_letters, entry_id, entry_id)
            ]
        for entry_id, fields in entries:
            args = [
                entry_id,
                fields[keys.DEAD_LETTER_PAYLOAD_FIELD],
                fields.get(keys.DEAD_LETTER_REQUEST_ID_FIELD, b""),
            ]
            moved += int(await move_back(keys=[shard.stream, shard.dead_letters], args=args))
    return moved
