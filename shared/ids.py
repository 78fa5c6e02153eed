"""Notification ids: UUIDv7, one random stem per request, the notification's index in the request in the last 24 bits.

All notifications of one request (up to 2**24) share their first 13 bytes (millisecond timestamp, version, variant
and 50 random bits), so one Redis key caches the whole request and GET finds it from any of its ids. Ids stay
time-ordered; with STREAM_SHARDS the stem's last byte names the request's shard. Collision odds and the reasons:
docs/architecture.md.
"""

import os
import secrets
import time
from uuid import UUID

STEM_BYTES = 13


def new_stem(shard: int | None = None, shards: int = 1) -> str:
    """Return a new request's stem (26 hex digits); with `shard`, one whose last byte is `shard` modulo `shards`.

    Without `shard` every random bit stays random (the shard follows from them: `shared.keys.Layout.shard_of_stem`);
    with it, log2(`shards`) of them are spent on naming it.
    """
    millis = time.time_ns() // 1_000_000
    random = bytearray(os.urandom(7))
    random[0] = 0x70 | (random[0] & 0x0F)  # version 7
    random[2] = 0x80 | (random[2] & 0x3F)  # variant 10
    if shard is not None and shards > 1:
        random[6] = shard + shards * secrets.randbelow((255 - shard) // shards + 1)
    return (millis.to_bytes(6, "big") + bytes(random)).hex()


def ids_of(stem: str, count: int) -> list[str]:
    """Return the ids (canonical strings) of the `count` notifications of the request with this stem, in order."""
    head = f"{stem[0:8]}-{stem[8:12]}-{stem[12:16]}-{stem[16:20]}-{stem[20:26]}"  # the last group ends with the index
    return [f"{head}{index:06x}" for index in range(count)]


def request_ids(count: int) -> tuple[str, list[str]]:
    """Return a new request's stem (hex) and `count` ids for its notifications, in order (canonical strings)."""
    stem = new_stem()
    return stem, ids_of(stem, count)


def stem_and_index(notification_id: UUID | str) -> tuple[str, int]:
    """Return the request stem (hex) and the position in the request of a notification id."""
    raw = (notification_id if isinstance(notification_id, UUID) else UUID(notification_id)).bytes
    return raw[:STEM_BYTES].hex(), int.from_bytes(raw[STEM_BYTES:], "big")


def notification_id_at(stem: str, index: int) -> str:
    """Return the id (canonical string) of the notification at `index` of the request with this stem (hex)."""
    return f"{stem[0:8]}-{stem[8:12]}-{stem[12:16]}-{stem[16:20]}-{stem[20:26]}{index:06x}"
