"""Every Redis key and stream name the service uses, in one place.

Write path: the API adds one stream entry per accepted request (the JSON array of its notifications) and one cache
key per notification. Drain: a consumer group reads the stream, stores rows in Postgres, acks and deletes the entry,
and gives each cache key a short TTL, after which GET reads Postgres.
"""

#: Stream of accepted, not yet stored requests; field `STREAM_FIELD` holds a JSON array of notifications.
STREAM = "notify:stream"
STREAM_FIELD = b"n"
#: Consumer group of the drain workers.
GROUP = "notify:drain"
#: Cache of one notification's JSON, read by GET until (and shortly after) the row is in Postgres. The key holds
#: the service id, so a GET with another service's API key cannot find it.
CACHE_PREFIX = "notify:n:"


def cache_key(service_id: str, notification_id: str) -> str:
    """Return the cache key of one notification of one service."""
    return f"{CACHE_PREFIX}{service_id}:{notification_id}"


#: Entries the drain could not decode or store, each with `entry` (original id), `payload` and `error`.
DEAD_LETTER_STREAM = "notify:dead"

#: Hash of the API keys that are valid now: field = SHA-256 of the key, value = service id. The API checks it
#: before Postgres (so ingestion keeps going while Postgres is down); revoking a key deletes its field.
API_KEYS_HASH = "notify:apikeys"
