"""Idempotency-Key records: what the group commit keeps per key, and how a retry's first answer is rebuilt from it.

A keyed POST hands the writer a record (`record`), kept for IDEMPOTENCY_TTL_SECONDS in the same script call as its
stream entry: `<fingerprint>@<stem> <count> <root>`, the SHA-256 (hex) of the route's mark and the body, the stem
its ids share (`shared.ids`), how many notifications it held and the base URL of a v2 answer (empty on the native
routes). A retry with the same key and body gets the first answer again, the same bytes: from the request's cache
key while it lasts, then rebuilt from Postgres's rows (`shared.codec`); when neither holds the notifications any
longer, a 410 (`IdempotentAnswerGoneError`), never a second queueing. Records of the older format (the fingerprint
followed by the whole answer) are answered as they are.
"""

import hashlib
from uuid import UUID

from starlette.datastructures import State

from api.errors import BadRequestError, IdempotencyKeyMismatchError, IdempotentAnswerGoneError
from api.govuk import objects as govuk_objects
from shared import keys, queries
from shared.codec import join_array
from shared.ids import ids_of

#: The longest Idempotency-Key accepted (draft-ietf-httpapi-idempotency-key-header leaves the limit to the server).
MAX_IDEMPOTENCY_KEY_LENGTH = 255
#: The length of a record's fingerprint (hex SHA-256).
FINGERPRINT_LENGTH = 64
_NEW_FORMAT = b"@"  # after the fingerprint: a record that names the ids; `{` or `[` start an old record's answer


def parse_key(value: bytes) -> str:
    """Return an Idempotency-Key header's key: its sf-string quotes, if any, removed; 400 unless printable ASCII."""
    if len(value) >= 2 and value[0] == value[-1] == 0x22:  # '"': the draft's form; the bare form is common too
        value = value[1:-1]
    key = value.decode("latin-1")
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not (key.isascii() and key.isprintable()):
        raise BadRequestError(
            f"the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters"
        )
    return key


def fingerprint(route_mark: bytes, body: bytes) -> bytes:
    """Return a request's fingerprint: the same key and body on another route (another mark) is another request."""
    digest = hashlib.sha256(route_mark)
    digest.update(body)
    return digest.hexdigest().encode()


def record(fingerprint_: bytes, stem: str, count: int, root: str) -> bytes:
    """Return the record of a keyed request: its fingerprint and what rebuilds its answer."""
    return b"%b@%s %d %s" % (fingerprint_, stem.encode(), count, root.encode())


async def replay(
    state: State, found: bytes, fingerprint_: bytes, service_id: UUID, idempotency_key: str, *, listed: bool
) -> tuple[bytes, str]:
    """Return the first answer to a request whose key was recorded (`found`), and its first id.

    `listed`: the route answers a list (`/multiple`). A v2 answer (Notify's) is rebuilt for the root recorded.

    Raises:
        IdempotencyKeyMismatchError: the key was used with another body or on another route (422).
        IdempotentAnswerGoneError: the first request's notifications are neither in Redis nor in Postgres (410).
    """
    if found[:FINGERPRINT_LENGTH] != fingerprint_:
        raise IdempotencyKeyMismatchError(
            f"Idempotency-Key {idempotency_key!r} was used before with another request body on this route; "
            "use a new key for a new request"
        )
    rest = found[FINGERPRINT_LENGTH:]
    if rest[:1] != _NEW_FORMAT:  # an old record: the answer itself
        start = rest.index(b'"id":"') + 6  # the answer is ours: `{"id":"<id>"...` or `[{"id":"<id>"...`
        return rest, rest[start : start + 36].decode()
    stem, count_, root = rest[1:].decode().split(" ", 2)
    ids = ids_of(stem, int(count_))
    service = str(service_id)
    layout: keys.Layout = state.writer.layout
    entry = await state.redis.get(layout.shard_of_stem(stem).request_key(service, stem))
    if entry is None:
        async with state.engine.connect() as conn:
            docs = await queries.fetch_notifications(conn, service_id, ids[0], ids[-1])
        if len(docs) != len(ids):
            raise IdempotentAnswerGoneError(
                f"Idempotency-Key {idempotency_key!r} was used for a request that was accepted (its first "
                f"notification is {ids[0]}, of {len(ids)}), but its notifications are no longer kept, so its answer "
                "cannot be given again; nothing was queued"
            )
        entry = join_array(docs)
    if listed:
        return entry, ids[0]
    doc = entry[1:-1]  # the array of one request's one notification
    if root:  # a v2 route: Notify's answer, for the base URL the first request was answered with
        doc = govuk_objects.created_json(doc, root)
    return doc, ids[0]
