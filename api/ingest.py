"""The notification routes' one path: authenticate → read the body → rate limit → documents → write → answer.

`serve` answers every notification route (native and GOV.UK Notify v2, POST and GET) from the raw ASGI request;
the hot path (`api.middleware.hotpath`) calls it before FastAPI sees the request, the FastAPI routes through
`respond`. A 201 goes out only once Redis has the request's notifications (one stream entry and one cache key per
request); a refused request queued nothing. `Route` says how the routes differ; every stage reads it there.
"""

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from uuid import UUID

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import State
from starlette.types import Receive, Scope

from api import idempotency, rate_limiter
from api.auth import service_for
from api.documents import Recipient, accept, templates_for
from api.errors import (
    BadRequestError,
    NotifyError,
    RateLimitedError,
    ReplicasUnconfirmedError,
    WriteOutcomeUnknownError,
)
from api.flush import Idempotency, RateLimit, RateState, Written
from api.govuk import objects as govuk_objects
from api.govuk.auth import notify_service_for
from api.govuk.validation import EMAIL, SMS, parse_send
from api.lookup import lookup, notify_lookup
from api.middleware.body import read_json_body
from api.rate_limiter import RateLimiter
from api.template_cache import TemplateVersion
from api.writer import RedisWriter
from shared import keys
from shared.codec import join_array
from shared.ids import new_stem
from shared.metrics import ACCEPTED
from shared.schemas import limited_notification, notification_list

JSON = "application/json"
NATIVE_PREFIX = "/notifications/v1"
V2_PREFIX = "/v2/notifications"
Headers = list[tuple[bytes, bytes]]
_JSON_HEADER = (b"content-type", JSON.encode())
_REPLAYED_HEADER = (b"idempotent-replayed", b"true")


@dataclass(frozen=True, slots=True)
class Route:
    """A notification route and what sets it apart: the one place where native and GOV.UK Notify v2 differ."""

    #: The route template (also the `route` label of the request metrics).
    path: str
    #: Where its notifications are read back: `GET {prefix}/{id}`.
    prefix: str
    #: GOV.UK Notify's: its JWT, its answers and errors, URIs under the request's base URL.
    notify: bool = False
    #: A v2 send's notification type (`email`, `sms`); None on the native routes.
    send: str | None = None
    #: A POST's mark in an Idempotency-Key's fingerprint (the same key and body on another route is another
    #: request); empty on a GET.
    mark: bytes = b""
    #: The body and the answer are lists (`/multiple`).
    listed: bool = False
    #: The 201 names the notification in `Location`.
    location: bool = False


SINGLE = Route(f"{NATIVE_PREFIX}/", NATIVE_PREFIX, mark=b"S", location=True)
MULTIPLE = Route(f"{NATIVE_PREFIX}/multiple", NATIVE_PREFIX, mark=b"M", listed=True)
ONE = Route(f"{NATIVE_PREFIX}/{{notification_id}}", NATIVE_PREFIX)
V2_EMAIL = Route(f"{V2_PREFIX}/email", V2_PREFIX, notify=True, send=EMAIL, mark=b"E")
V2_SMS = Route(f"{V2_PREFIX}/sms", V2_PREFIX, notify=True, send=SMS, mark=b"T")
V2_ONE = Route(f"{V2_PREFIX}/{{notification_id}}", V2_PREFIX, notify=True)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~5x to make, once per request
class Ingest:
    """One POST on its way through the stages: who sent it, under which key, and where it is queued."""

    state: State
    route: Route
    service_id: UUID
    #: `service_id` as text, as in the Redis keys and the documents.
    service: str
    request_id: str
    #: The Idempotency-Key, if the request has one.
    idempotency_key: str | None
    #: The stem the request's notification ids share (`shared.ids`); it names `shard`.
    stem: str
    shard: keys.Shard
    #: The base URL of a v2 answer's URIs; empty on the native routes.
    root: str


@dataclass(slots=True)
class Parsed:
    """A valid body: its notifications, the template of each (or None), and a v2 send's reference."""

    items: Sequence[Recipient]
    templates: list[TemplateVersion | None]
    reference: str | None = None


@dataclass(slots=True)
class Documents:
    """A request's notifications, ready to queue: their ids, the stream entry, and the 201's body."""

    ids: list[str]
    #: The JSON array of the documents: the stream entry, and the cache value GET and replays read.
    entry: bytes
    #: The array for a list, else the one document (Notify's object on v2).
    answer: bytes


async def serve(
    state: State, route: Route, scope: Scope, receive: Receive, notification_id: UUID | None = None
) -> tuple[int, bytes, Headers]:
    """Answer a notification route from the raw ASGI request: (status, body, all headers).

    Errors are raised, as from any route (`api.handlers` maps them).
    """
    authorization = content_type = idempotency_header = None
    for name, value in scope["headers"]:  # the first of a repeated header counts, as in Starlette's Headers
        if name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
        elif name == b"content-type" and content_type is None:
            content_type = value.decode("latin-1")
        elif name == b"idempotency-key" and idempotency_header is None:
            idempotency_header = value
    service_id = await authenticate(state, route, authorization)
    root = base_url(scope, state.settings.public_base_url) if route.notify else ""
    if not route.mark:  # a GET
        assert notification_id is not None
        status, body, headers = 200, await read(state, route, service_id, notification_id, root), [_JSON_HEADER]
    else:
        request = begin(state, route, service_id, scope.get("notify.request_id", ""), idempotency_header, root)
        refuse_before_body(request)
        raw = await read_json_body(content_type, receive, state.settings.max_body_bytes)
        refuse_before_validation(request, raw)
        parsed = await parse(request, raw)
        limit = await rate_limit(request, len(parsed.items))
        queued = documents(request, parsed)
        fingerprint = None if request.idempotency_key is None else idempotency.fingerprint(route.mark, raw)
        written = await write(request, queued, limit, fingerprint)
        body, headers = await answer(request, queued, written, fingerprint)
        status = 201
    headers.append((b"content-length", str(len(body)).encode()))
    return status, body, headers


async def respond(request: Request, route: Route, notification_id: UUID | None = None) -> Response:
    """Serve a notification route for FastAPI (the hot path normally answers before FastAPI sees it)."""
    status, body, headers = await serve(request.app.state, route, request.scope, request.receive, notification_id)
    response = Response(body, status_code=status)
    response.raw_headers = headers
    return response


async def authenticate(state: State, route: Route, authorization: str | None) -> UUID:
    """Return the caller's service: a bearer API key, or GOV.UK Notify's JWT on the v2 routes (401/403 if not)."""
    return await (notify_service_for if route.notify else service_for)(state, authorization)


async def read(state: State, route: Route, service_id: UUID, notification_id: UUID, root: str) -> bytes:
    """Return a notification of the service, from Redis or Postgres (Notify's object on v2); 404 if none."""
    if route.notify:
        return await notify_lookup(state, service_id, notification_id, root)
    return await lookup(state, service_id, notification_id)


def begin(
    state: State, route: Route, service_id: UUID, request_id: str, idempotency_header: bytes | None, root: str
) -> Ingest:
    """Give a POST its ids' stem, and so its shard: every retry with the same Idempotency-Key goes to one shard."""
    key = None if idempotency_header is None else idempotency.parse_key(idempotency_header)
    layout: keys.Layout = state.writer.layout
    service = str(service_id)
    stem = new_stem(None if key is None else layout.shard_for_idempotency_key(service, key), layout.count)
    return Ingest(state, route, service_id, service, request_id, key, stem, layout.shard_of_stem(stem), root)


def refuse_before_body(request: Ingest) -> None:
    """Refuse (429) a POST of one notification before its body is read when the bucket lacks a token.

    Not a keyed request: it may be a retry whose first answer Redis has. Not a list: one larger than the whole
    limit is a 413 even while the bucket is empty, so it is counted first (`refuse_before_validation`).
    """
    if request.route.listed or request.idempotency_key is not None:
        return
    refused = request.state.rate_limits.refused_before(request.service_id, 1, request.shard.index)
    if refused:
        raise rate_limited_error(refused, 1)


def refuse_before_validation(request: Ingest, raw: bytes) -> None:
    """Refuse (429) a list that cannot fit in a service's bucket before it is validated.

    Only for a service near its limit: counting the list (orjson) costs ~1/5 of validating it, and a flood past
    its limit would otherwise make the API validate every refused request.
    """
    if not request.route.listed or request.idempotency_key is not None:
        return
    limits: RateLimiter = request.state.rate_limits
    if not limits.knows(request.service_id, request.shard.index):
        return
    cost = _items_in(raw)
    if cost and (refused := limits.refused_before(request.service_id, cost, request.shard.index)):
        raise rate_limited_error(refused, cost)


def _items_in(raw: bytes) -> int | None:
    """Return how many items a JSON array body holds, or None if it is not one (validation will say why)."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return len(parsed) if isinstance(parsed, list) else None


async def parse(request: Ingest, raw: bytes) -> Parsed:
    """Validate the body (Notify's checks on v2) and resolve each notification's template.

    Raises:
        RequestValidationError: the body or a template check fails (422; Notify's 400 on v2).
    """
    state, route, service_id = request.state, request.route, request.service_id
    if route.send is not None:
        send = parse_send(raw, route.send, service_id, state.settings)
        template = await state.templates.resolve(service_id, send.template_id, None)
        return Parsed([send], [govuk_objects.check_template(template, send)], send.reference)
    try:
        if route.listed:
            native = notification_list(state.settings).validate_json(raw)
        else:
            native = [limited_notification(state.settings).model_validate_json(raw)]
    except ValidationError as exc:
        raise _body_error(exc) from None
    return Parsed(native, await templates_for(native, service_id, state.templates, listed=route.listed))


def _body_error(exc: ValidationError) -> RequestValidationError:
    """Report pydantic's errors the way FastAPI reports body errors (`loc` starts with "body").

    How errors are then shown (no echo of unparsable bodies, readable pattern messages) is `api.handlers`'s job.
    """
    errors = exc.errors(include_url=False)
    for error in errors:
        error["loc"] = ("body", *error["loc"])
    return RequestValidationError(errors)


async def rate_limit(request: Ingest, cost: int) -> RateLimit | None:
    """Return the request's place in its service's token bucket (None if the service is not limited).

    What this process knows of the bucket was asked before the body was read or validated
    (`refuse_before_body`, `refuse_before_validation`); the bucket has only gained since, so it is not asked
    again: Redis's script decides.

    Raises:
        BadRequestError: the request holds more notifications than the whole limit (413: it never fits).
    """
    limits: RateLimiter = request.state.rate_limits
    service_id, shard = request.service_id, request.shard
    per_minute = limits.known_limit(service_id)
    if per_minute is None:
        per_minute = await limits.limit_for(service_id)
    if not per_minute:
        return None
    if cost > per_minute:
        raise BadRequestError(
            f"the request holds {cost} notifications, more than your service's whole rate limit of {per_minute} "
            "per minute: send at most that many per request",
            status_code=413,
        )
    # each shard counts in a bucket of its own, refilled at its share of the limit
    shards = request.state.writer.layout.count
    return RateLimit(shard.bucket_key(request.service), per_minute, cost, per_minute / shards)


def rate_limited_error(state: RateState, cost: int) -> RateLimitedError:
    """The 429 of a write the service's bucket cannot hold yet (`cost` tokens), with Retry-After and RateLimit-*."""
    retry_after = max(1, math.ceil(state.wait_ms / 1000))
    return RateLimitedError(
        f"your service's rate limit of {state.limit} notifications per minute is reached: {state.remaining} left, "
        f"this request needs {cost}; nothing was queued, retry after {retry_after} s",
        retry_after,
        rate_limiter.rate_headers(state),
        state.limit,
    )


def documents(request: Ingest, parsed: Parsed) -> Documents:
    """Give the notifications their ids (of the request's stem), render their templates, encode each once."""
    route = request.route
    ids, docs = accept(
        parsed.items,
        request.service,
        parsed.templates,
        request.state.settings,
        request.stem,
        listed=route.listed,
        notification_type=route.send,
        reference=parsed.reference,
    )
    entry = join_array(docs)
    body = entry if route.listed else docs[0]
    if route.notify:
        body = govuk_objects.created_json(body, request.root)
    return Documents(ids, entry, body)


async def write(request: Ingest, queued: Documents, limit: RateLimit | None, fingerprint: bytes | None) -> Written:
    """Queue the documents: one stream entry and cache key, with the key's record and the bucket's count, or none.

    Raises:
        WriteOutcomeUnknownError: Redis did not confirm the write (503; the detail says how to find out).
        RateLimitedError: Redis's bucket refused the request; nothing was queued (429).
    """
    state, service, shard = request.state, request.service, request.shard
    keyed = None
    if request.idempotency_key is not None:
        assert fingerprint is not None
        kept = idempotency.record(fingerprint, request.stem, len(queued.ids), request.root)
        keyed = Idempotency(
            shard.idempotency_key(service, request.idempotency_key), kept, state.settings.idempotency_ttl_seconds
        )
    writer: RedisWriter = state.writer
    sent_at = time.monotonic()
    try:
        written = await writer.write(
            queued.entry, shard.request_key(service, request.stem), request.request_id, keyed, limit, shard.index
        )
    except WriteOutcomeUnknownError as exc:
        raise _outcome_unknown(request, exc, queued.ids) from exc
    if written.rate is not None:
        state.rate_limits.note(written.rate, request.service_id, sent_at, shard.index)
        if not written.rate.allowed:
            raise rate_limited_error(written.rate, len(queued.ids))
    return written


def _outcome_unknown(request: Ingest, exc: WriteOutcomeUnknownError, ids: list[str]) -> WriteOutcomeUnknownError:
    """The 503 of a write Redis did not confirm, saying how the client finds out whether it was queued."""
    retry = (
        "a retry with the same Idempotency-Key is safe"
        if request.idempotency_key is not None
        else "a plain retry may queue it twice"
    )
    where = f"GET {request.route.prefix}/{ids[0]}"
    if isinstance(exc, ReplicasUnconfirmedError):  # it is queued, perhaps not safely yet
        return ReplicasUnconfirmedError(f"{exc.detail}. {where} answers 200 while Redis has it; {retry}")
    return WriteOutcomeUnknownError(
        "Redis did not confirm the write within REDIS_TIMEOUT_SECONDS: the request may or may not have been "
        f"queued. {where} answers 200 once Redis has it (then all {len(ids)} of its "
        f"notifications were queued) and 404 if it was not; {retry}"
    )


async def answer(
    request: Ingest, queued: Documents, written: Written, fingerprint: bytes | None
) -> tuple[bytes, Headers]:
    """Return the 201's body and headers: the notifications queued, or a retry's first answer given again."""
    route = request.route
    if written.record is None:
        ACCEPTED.inc(len(queued.ids))
        body, first_id = queued.answer, queued.ids[0]
    else:  # a record is found only for a keyed request
        assert fingerprint is not None
        assert request.idempotency_key is not None
        body, first_id = await idempotency.replay(
            request.state, written.record, fingerprint, request.service_id, request.idempotency_key, listed=route.listed
        )
    headers = [_JSON_HEADER]
    if route.location:
        headers.append((b"location", f"{route.prefix}/{first_id}".encode()))
    if written.record is not None:
        headers.append(_REPLAYED_HEADER)
    if written.rate is not None:
        headers += rate_limiter.rate_headers(written.rate)
    return body, headers


#: A plain `host[:port]`: a name or an IPv4 address, or a bracketed IPv6 address, and an optional port.
_PLAIN_HOST = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


def base_url(scope: Scope, public_base_url: str | None) -> str:
    """The base URL of the v2 answers' URIs, with its trailing slash: PUBLIC_BASE_URL, else as the client called it.

    Without PUBLIC_BASE_URL the Host header is taken only if it is a plain host[:port] (lower-cased): anything else
    (a path, credentials, quotes, markup) would be written into the answers, and into the answers an
    Idempotency-Key replays.

    Raises:
        NotifyError: no PUBLIC_BASE_URL and a Host header that is not a plain host[:port] (400).
    """
    if public_base_url is not None:
        return public_base_url
    host = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"host"), None)
    if host is None:
        server_host, port = scope.get("server") or ("localhost", 80)
        host = f"{server_host}:{port}"
    root = _root(scope.get("scheme", "http"), host)
    if root is None:
        raise NotifyError("The Host header must be a plain host[:port] (or set PUBLIC_BASE_URL)")
    return root


@lru_cache(maxsize=256)
def _root(scheme: str, host: str) -> str | None:
    """`scheme://host/` (lower-cased) if `host` is a plain host[:port], else None; cached: clients use few hosts."""
    return f"{scheme}://{host.lower()}/" if _PLAIN_HOST.fullmatch(host) else None
