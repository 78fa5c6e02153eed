"""Every Redis key and stream name the service uses, in one place.

Write path: the API sets one cache key per accepted request (the JSON array of its notifications) and adds one
stream entry naming that key. Drain: a consumer group reads the stream, fetches the keys' JSON, stores rows in
Postgres, acks and deletes the entries, and gives each cache key a short TTL, after which GET reads Postgres.
"""

import hashlib

from shared.ids import stem_and_index

#: Stream of accepted, not yet stored requests. The API's entries name the request's cache key in the field
#: `STREAM_KEY_FIELD`: the request's JSON array is kept once, in that key. Entries may instead carry the JSON array
#: itself in `STREAM_FIELD` (dead letters replayed, entries written before version 1.1, the benchmark's naive
#: baseline); the drain takes both.
STREAM = "notify:stream"
STREAM_FIELD = b"n"
STREAM_KEY_FIELD = b"k"
#: Field of a stream entry holding the id of the HTTP request that made it (for the logs).
REQUEST_ID_FIELD = b"r"
#: Field of a stream entry holding the length in bytes of the JSON its cache key holds, so that the drain can fetch
#: a batch in parts of at most DRAIN_BATCH_BYTES without fetching it first. Entries written by an older API lack
#: it: the drain asks Redis (STRLEN).
STREAM_SIZE_FIELD = b"s"
#: Consumer group of the drain workers.
GROUP = "notify:drain"
#: Cache of one request's notifications (the JSON array the API answered with), read by GET until (and shortly
#: after) they are in Postgres. One key per request: ids of one request share a stem (see `shared.ids`). The key
#: holds the service id, so a GET with another service's API key cannot find it.
CACHE_PREFIX = "notify:r:"


def request_key(service_id: str, stem: str) -> str:
    """Return the cache key of a service's request, by the stem its notification ids share."""
    return f"{CACHE_PREFIX}{service_id}:{stem}"


def cache_key(service_id: str, notification_id: str) -> str:
    """Return the cache key of the request a notification of a service came in."""
    stem, _ = stem_and_index(notification_id)
    return request_key(service_id, stem)


#: Idempotency records, one per service and Idempotency-Key: the first request's fingerprint and answer, written by
#: the group-commit script with the request's stream entry and kept for IDEMPOTENCY_TTL_SECONDS.
IDEMPOTENCY_PREFIX = "notify:idem:"


def idempotency_key(service_id: str, key: str) -> str:
    """Return the Redis key of a service's idempotency record for an Idempotency-Key (hashed: any length, no `:`)."""
    return f"{IDEMPOTENCY_PREFIX}{service_id}:{hashlib.sha256(key.encode()).hexdigest()}"


#: Entries the drain could not decode or store, each with `entry` (original id), `payload` and `error`.
DEAD_LETTER_STREAM = "notify:dead"

#: Hash of the API keys that are valid now: field = SHA-256 of the key, value = service id. The API checks it
#: before Postgres (so ingestion keeps going while Postgres is down); revoking a key deletes its field.
API_KEYS_HASH = "notify:apikeys"
#: Field of API_KEYS_HASH present once the registry holds every valid key, and every key's sealed secret in
#: API_KEY_SECRETS_PREFIX (loaded from Postgres): from then on a key or a service not in it is refused without asking
#: Postgres. Lost with the hash (a Redis without persistence restarted). A registry that an older version completed
#: (field `complete`) holds no secrets, so it is loaded again once.
API_KEYS_COMPLETE_FIELD = "complete:secrets"

#: Per service, a hash of its keys' secrets sealed with SECRET_KEY (`shared.secretbox`; never the plain secret), for
#: checking GOV.UK Notify JWTs without Postgres: field = key id, value = `v:<ciphertext>` for a valid key,
#: `r<unix time of revocation>:<ciphertext>` for a revoked one; an empty ciphertext is a key issued before secrets
#: were kept (it cannot sign).
API_KEY_SECRETS_PREFIX = "notify:apikeys:"
#: How long a revoked key stays in its service's hash, so that a token it signed is told "API key revoked" rather
#: than "not found" (GOV.UK Notify looks at keys revoked in the last 7 days too).
REVOKED_KEY_GRACE_SECONDS = 7 * 86_400


def api_key_secrets_key(service_id: object) -> str:
    """Return the Redis key of a service's sealed key secrets."""
    return f"{API_KEY_SECRETS_PREFIX}{service_id}"


#: Per-service rate limits that differ from RATE_LIMIT_PER_MINUTE: field = service id, value = notifications per
#: minute (0: unlimited). Mirrors `services.rate_limit_per_minute` so that the API reads limits without Postgres.
RATE_LIMITS_HASH = "notify:ratelimits"
#: Field of RATE_LIMITS_HASH present once the hash holds every service's own limit (loaded from Postgres).
RATE_LIMITS_COMPLETE_FIELD = "complete"
#: Token buckets, one per rate-limited service: "<tokens> <at, Redis ms>", updated by the group-commit script and
#: expiring once full (a missing bucket is a full one).
RATE_BUCKET_PREFIX = "notify:bucket:"


def rate_bucket_key(service_id: str) -> str:
    """Return the Redis key of a service's token bucket."""
    return f"{RATE_BUCKET_PREFIX}{service_id}"
