"""What a stream entry says, and how a batch of entries is cut into parts and fetched, one part at a time.

An entry names the cache key holding its request's JSON array (or, for dead letters replayed and older entries,
carries the array inline), the request's id, and the array's size in bytes, so that a batch can be cut into parts of
at most DRAIN_BATCH_BYTES before any JSON is fetched.
"""

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import date

from redis.asyncio import Redis

from shared import keys
from shared.codec import NotificationDoc


@dataclass(slots=True)
class Entry:
    """One stream entry: its id, its payload (a JSON array of notifications), its cache key (None: keep it)."""

    entry_id: bytes
    payload: bytes
    docs: list[NotificationDoc]
    cache_key: str | None
    request_id: str = ""
    days: set[date] = field(default_factory=set)  # the days its notifications' partitions cover


RawEntry = tuple[bytes, dict[bytes, bytes] | None]
#: Cache keys fetched per MGET.
FETCH_CHUNK = 1000


@dataclass(slots=True)
class Fetched:
    """A stream entry with its request's JSON: fetched from the cache key the entry names, or carried inline."""

    entry_id: bytes
    payload: bytes | None
    cache_key: str | None  # the key the entry named (None: an inline entry, or no fields at all)
    request_id: str
    size: int | None = 0  # bytes of its JSON, as the entry declares it (None: not declared, ask Redis)


def describe(raw: list[RawEntry]) -> list[Fetched]:
    """What each stream entry says: the cache key it names (or its inline JSON), its request id, its JSON's size."""
    described = []
    for entry_id, fields in raw:
        fields = fields or {}  # Redis < 7 returns an entry deleted meanwhile with no fields
        request_id = fields.get(keys.REQUEST_ID_FIELD, b"").decode(errors="replace")
        key, inline = fields.get(keys.STREAM_KEY_FIELD), fields.get(keys.STREAM_FIELD)
        entry = Fetched(entry_id, inline, key.decode() if key else None, request_id, len(inline or b""))
        if entry.cache_key is not None:
            declared = fields.get(keys.STREAM_SIZE_FIELD, b"")
            entry.size = int(declared) if declared.isdigit() else None  # written by an older API: unknown
        described.append(entry)
    return described


def parts_by_bytes(entries: list[Fetched], limit: int) -> Iterator[list[Fetched]]:
    """Split entries, in order, into runs whose JSON adds up to at most `limit` bytes (at least one entry each)."""
    part: list[Fetched] = []
    size = 0
    for entry in entries:
        length = entry.size or 0
        if part and size + length > limit:
            yield part
            part, size = [], 0
        part.append(entry)
        size += length
    if part:
        yield part


def release(part: list[Fetched]) -> None:
    """Drop a part's JSON once it is stored, before the next part is fetched (the entries outlive the part)."""
    for entry in part:
        entry.payload = None


async def fetched_parts(redis: Redis, raw: list[RawEntry], limit: int) -> AsyncIterator[list[Fetched]]:
    """Yield the entries in parts of at most `limit` (DRAIN_BATCH_BYTES) bytes of JSON, fetched one at a time.

    Each part is fetched just before it is yielded and released when the caller asks for the next, so only one
    part's JSON is held at a time.
    """
    for part in parts_by_bytes(await _sized(redis, raw), limit):
        await _fetch(redis, part)
        yield part
        release(part)


async def _sized(redis: Redis, raw: list[RawEntry]) -> list[Fetched]:
    """Describe the entries (`describe`), asking Redis the size of JSON the entry does not declare (STRLEN).

    The API declares each entry's size in the entry; entries written by an older API do not, and are measured
    in one round trip, so that no part is fetched without knowing its size.
    """
    entries = describe(raw)
    unknown = [(entry, entry.cache_key) for entry in entries if entry.size is None and entry.cache_key]
    if unknown:
        async with redis.pipeline(transaction=False) as pipe:
            for _, key in unknown:
                pipe.strlen(key)
            lengths = await pipe.execute(raise_on_error=False)
        for (entry, _), length in zip(unknown, lengths, strict=True):
            entry.size = length if isinstance(length, int) else 0  # not a string: MGET finds no JSON there
    return entries


async def _fetch(redis: Redis, part: list[Fetched]) -> None:
    """Fetch the JSON of the entries that name a cache key: one MGET per FETCH_CHUNK keys."""
    named = [(entry, entry.cache_key) for entry in part if entry.cache_key is not None]
    for start in range(0, len(named), FETCH_CHUNK):
        chunk = named[start : start + FETCH_CHUNK]
        payloads = await redis.mget([key for _, key in chunk])
        for (entry, _), payload in zip(chunk, payloads, strict=True):
            entry.payload = payload
