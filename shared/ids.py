"""Notification ids: UUIDv7, one random stem per request, the position in the request in the last 32 bits.

RFC 9562 lets UUIDv7 spend part of `rand_b` on a counter: all notifications of one request share their first
12 bytes (48-bit millisecond timestamp, version, 12 + 30 random bits) and carry their index in the request in
the last 4 bytes. Ids stay time-ordered (the primary-key index stays append-only) and unique (42 random bits per
request per millisecond), and the stem names the request, so the Redis cache keeps one key per request rather
than one per notification: GET finds the request's cached JSON array by the stem and picks the item by index.
"""

from uuid import UUID

import uuid_utils

STEM_BYTES = 12


def request_ids(count: int) -> list[str]:
    """Return `count` ids for the notifications of one request, in order (canonical lower-case strings)."""
    h = uuid_utils.uuid7().bytes[:STEM_BYTES].hex()
    head = f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:24]}"  # the last group ends with the index
    return [f"{head}{index:08x}" for index in range(count)]


def stem_and_index(notification_id: UUID | str) -> tuple[str, int]:
    """Return the request stem (hex) and the position in the request of a notification id."""
    raw = (notification_id if isinstance(notification_id, UUID) else UUID(notification_id)).bytes
    return raw[:STEM_BYTES].hex(), int.from_bytes(raw[STEM_BYTES:], "big")
