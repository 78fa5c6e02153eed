"""Every Redis key, stream and field name the service uses, in one place.

Write path: the API sets one cache key per accepted request (the JSON array of its notifications) and adds one
stream entry naming that key. Drain: a consumer group reads the stream, fetches the keys' JSON, stores rows in
Postgres, acks and deletes the entries, and gives each cache key a short TTL, after which GET reads Postgres.
"""

import hashlib
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from shared.ids import stem_and_index

if TYPE_CHECKING:
    from shared.settings import Settings

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


def cache_key(service_id: str, notification_id: str) -> str:
    """Return the cache key of the request a notification of a service came in (one stream on a plain Redis)."""
    return layout().shard_of_id(notification_id).cache_key(service_id, notification_id)


#: Entries the drain could not decode or store (one stream per shard: `Shard.dead_letters`), with the fields below.
DEAD_LETTER_STREAM = "notify:dead"
#: The dead-lettered entry's id in its stream.
DEAD_LETTER_ENTRY_FIELD = b"entry"
#: The request's JSON array (empty when it could not be fetched), which a replay puts back on the stream.
DEAD_LETTER_PAYLOAD_FIELD = b"payload"
#: Why the drain gave up on the entry.
DEAD_LETTER_ERROR_FIELD = b"error"
#: The drain consumer that gave up.
DEAD_LETTER_CONSUMER_FIELD = b"consumer"
#: The id of the HTTP request that made the entry (for the logs; kept by a replay).
DEAD_LETTER_REQUEST_ID_FIELD = b"request_id"

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

#: The SECRET_KEY keys each live API process holds (`shared.secret_holders`): field = process, value = JSON
#: `{"keys": [fingerprint, ...] (the sealing key first), "until": unix time (Redis's clock) it counts as live}`.
SECRET_HOLDERS_HASH = "notify:secret-holders"  # noqa: S105 (a key name, not a secret)
# --- shards --------------------------------------------------------------------------------------------------------
#
# With STREAM_SHARDS=N (or on a Redis Cluster) the queue is N streams. Every key one group-commit script call
# touches (the stream, the requests' cache keys, their idempotency records, the services' token buckets) carries
# its shard's hash tag, `notify:{<tag>}:...`, so that the call stays in one slot of a cluster. A request's shard is
# in its notification ids (the last byte of the request's stem, modulo N: `Layout.shard_of_stem`), so GET goes
# straight to it. With one shard on a plain Redis the names are the ones above, untagged, as before shards existed.


@dataclass(frozen=True)
class Shard:
    """One stream and the keys that go with it."""

    index: int
    #: The hash tag of the shard's keys; None for the untagged names of a single stream on a plain Redis.
    tag: str | None

    def _name(self, name: str) -> str:
        return f"notify:{name}" if self.tag is None else f"notify:{{{self.tag}}}:{name}"

    @cached_property
    def _request_prefix(self) -> str:
        return self._name("r:")

    @property
    def stream(self) -> str:
        """The shard's stream of accepted, not yet stored requests."""
        return self._name("stream")

    @property
    def dead_letters(self) -> str:
        """The shard's dead-letter stream."""
        return self._name("dead")

    def request_key(self, service_id: str, stem: str) -> str:
        """Return the cache key of a service's request, by the stem its notification ids share."""
        return f"{self._request_prefix}{service_id}:{stem}"

    def cache_key(self, service_id: str, notification_id: str) -> str:
        """Return the cache key of the request a notification of a service came in."""
        return self.request_key(service_id, stem_and_index(notification_id)[0])

    def idempotency_key(self, service_id: str, key: str) -> str:
        """Return the key of a service's idempotency record for an Idempotency-Key (hashed: any length, no `:`).

        The record, the request's fingerprint and what rebuilds its first answer (`api.idempotency`), is written by
        the group-commit script with the request's stream entry and kept for IDEMPOTENCY_TTL_SECONDS.
        """
        return f"{self._name('idem')}:{service_id}:{hashlib.sha256(key.encode()).hexdigest()}"

    def bucket_key(self, service_id: str) -> str:
        """Return the key of a service's token bucket in this shard.

        The value is "<tokens> <at, Redis ms>", updated by the group-commit script; the key expires once the bucket
        is full again (a missing bucket is a full one).
        """
        return f"{self._name('bucket')}:{service_id}"


def _tag_in(low: int, high: int, index: int) -> str:
    """Return the first tag `s<index>`, `s<index>.1`, ... whose hash slot is in [low, high)."""
    for attempt in range(1_000_000):
        tag = f"s{index}" if attempt == 0 else f"s{index}.{attempt}"
        if low <= key_slot(tag.encode()) < high:
            return tag
    raise RuntimeError(f"no hash tag found for slots {low}..{high}")  # pragma: no cover - 16384 slots, CRC16


@dataclass(frozen=True)
class Layout:
    """The shards of the queue: which keys a request, a GET, a worker uses."""

    shards: tuple[Shard, ...]

    @cached_property
    def count(self) -> int:
        """How many shards there are."""
        return len(self.shards)

    def shard_of_stem(self, stem: str) -> Shard:
        """Return the shard of the request with this stem (hex): its last byte modulo the shard count."""
        shards = self.shards
        return shards[0] if len(shards) == 1 else shards[int(stem[-2:], 16) % len(shards)]

    def shard_of_id(self, notification_id: str) -> Shard:
        """Return the shard of a notification's request."""
        return self.shard_of_stem(stem_and_index(notification_id)[0])

    def shard_for_idempotency_key(self, service_id: str, key: str) -> int:
        """Return the shard a request with this Idempotency-Key goes to (every retry goes to the same one)."""
        digest = hashlib.sha256(f"{service_id}:{key}".encode()).digest()
        return int.from_bytes(digest[:4], "big") % len(self.shards)


def layout_for(settings: "Settings") -> Layout:
    """Return the layout STREAM_SHARDS and REDIS_CLUSTER describe."""
    return layout(settings.stream_shards, settings.redis_cluster)


@lru_cache
def layout(shards: int = 1, cluster: bool = False) -> Layout:
    """Return the layout of `shards` streams; tagged (on a cluster, or with more than one) or the classic names.

    Tags are chosen by hash slot: shard i's tag falls in the i-th of `shards` equal slot ranges, so shards spread
    evenly over primaries that hold equal ranges (as `redis-cli --cluster create` makes them).
    """
    if shards == 1 and not cluster:
        return Layout((Shard(0, None),))
    step = REDIS_CLUSTER_HASH_SLOTS / shards
    return Layout(tuple(Shard(i, _tag_in(round(i * step), round((i + 1) * step), i)) for i in range(shards)))
