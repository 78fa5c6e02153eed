"""The read side of the notification routes: a notification from its request's cached JSON in Redis, else Postgres.

A request's notifications stay cached as one JSON array (`pick` cuts one out unparsed) until the drain has stored
them and the key expired. `lookup` answers the native GET, `notify_lookup` GOV.UK Notify's v2 GET (Notify's object,
v2 notifications only); another service's notification is a 404.
"""

from uuid import UUID

import orjson
from starlette.datastructures import State

from api.errors import NotFoundError, NotifyNotFoundError
from api.govuk import objects as govuk_objects
from shared import queries
from shared.ids import notification_id_at, stem_and_index


def pick(request_json: bytes | None, stem: str, index: int) -> bytes | None:
    """Return one notification's JSON out of its request's cached array (None if it is not there), unparsed.

    The array is ours (`join_array` of `encode_notification`'s documents), and in our JSON every `"` inside a
    string is escaped and every personalization value is a string, so `{"id":"<an id>"` occurs only where a
    document (or its template, whose id is another) starts: the document at `index` starts at `{"id":"<its id>"`
    and ends where the next one starts, or at the closing `]`. Cutting it out costs a search of the bytes;
    parsing the whole array to return one item would hold the event loop for as long as a large request takes to parse.
    """
    if request_json is None:
        return None
    start = request_json.find(b'{"id":"' + notification_id_at(stem, index).encode() + b'"')
    if start < 0:
        return None
    end = request_json.find(b',{"id":"' + notification_id_at(stem, index + 1).encode() + b'"', start)
    if end < 0:
        end = len(request_json) - 1  # the last document: up to the closing bracket
    return request_json[start:end]


async def lookup(state: State, service_id: UUID, notification_id: UUID) -> bytes:
    """Return a notification from the Redis cache or, once drained and expired there, from Postgres."""
    stem, index = stem_and_index(notification_id)
    shard = state.writer.layout.shard_of_stem(stem)
    cached = await state.redis.get(shard.request_key(str(service_id), stem))
    found = pick(cached, stem, index)
    if found is None:
        async with state.engine.connect() as conn:
            found = await queries.fetch_notification(conn, notification_id, service_id)
    if found is None:
        raise NotFoundError(f"notification {notification_id} not found")
    return found


async def notify_lookup(state: State, service_id: UUID, notification_id: UUID, root: str) -> bytes:
    """Return Notify's object of a v2 notification, from Redis or Postgres (the native routes' are not Notify's)."""
    try:
        found = orjson.loads(await lookup(state, service_id, notification_id))
    except NotFoundError:
        raise NotifyNotFoundError() from None
    if found.get("type") is None:
        raise NotifyNotFoundError()
    return orjson.dumps(govuk_objects.notification(found, root))
