"""The dead-letter stream: entries the drain could not decode or store, kept with their error for a person.

`list_dead_letters` shows them; `replay` puts their payloads back on the main stream (after the cause was fixed,
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


async def list_dead_letters(redis: Redis, count: int = 100) -> list[DeadLetter]:
    """Return up to `count` dead letters, oldest first."""
    return [
        DeadLetter(
            entry_id.decode(),
            fields.get(b"entry", b"").decode(),
            fields.get(b"error", b"").decode(errors="replace"),
            fields.get(b"payload", b""),
        )
        for entry_id, fields in await redis.xrange(keys.DEAD_LETTER_STREAM, count=count)
    ]


async def replay(redis: Redis, ids: list[str] | None = None) -> int:
    """Move dead letters (the given ids, or all) back to the main stream; return how many moved."""
    if ids is None:
        entries = await redis.xrange(keys.DEAD_LETTER_STREAM)
    else:
        entries = [
            entry for entry_id in ids for entry in await redis.xrange(keys.DEAD_LETTER_STREAM, entry_id, entry_id)
        ]
    for entry_id, fields in entries:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                keys.STREAM,
                {keys.STREAM_FIELD: fields[b"payload"], keys.REQUEST_ID_FIELD: fields.get(b"request_id", b"")},
            )
            pipe.xdel(keys.DEAD_LETTER_STREAM, entry_id)
            await pipe.execute()
    return len(entries)
