"""The notification routes: the write path (auth → validate → id → Redis → 201) and the read-through GET.

POST parses the raw body once, checks any template against the personalization, gives the request's
notifications time-ordered UUIDv7 ids with one shared stem (`shared.ids`), serializes each once, and hands the
bytes to the group-commit writer: one stream entry and one cache key per request. The 201 goes out after Redis
acknowledged. With an `Idempotency-Key` header the writer records the key in the same script call, or finds it
recorded and hands back its record, from which `api.idempotency` rebuilds the first answer, sent again with
`Idempotent-Replayed: true`. GET looks in the request's cached array first (notifications not yet drained, or
drained a moment ago) and then in Postgres.
Every route works within the service of the caller's API key; another service's notification is a 404.

The GOV.UK Notify v2 routes `POST /v2/notifications/email|sms` and `GET /v2/notifications/{id}` take the same path:
Notify's JWT instead of the bearer key (`api.govuk.auth`), Notify's body checks (`api.govuk.validation`) and
template checks, then the same ids, documents (with the notification's type and reference), group commit,
Idempotency-Key and rate limit; the answer is Notify's object (`api.govuk.objects`), errors are in Notify's shape.

The documents are checked and made in `api.documents`, GET's read-through is `api.lookup`. `serve` answers all
the routes from the raw ASGI request; the hot path (`api.hotpath`) calls it before FastAPI sees
the request, and the FastAPI routes below, which exist for the OpenAPI docs, call it too.
"""

import math
import re
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import State
from starlette.types import Receive, Scope

from api import idempotency, rate_limiter
from api.auth import ServiceId, service_for
from api.body import read_json_body
from api.documents import Recipient, accept, templates_for
from api.errors import (
    BadRequestError,
    NotifyError,
    RateLimitedError,
    ReplicasUnconfirmedError,
    WriteOutcomeUnknownError,
)
from api.flush import Idempotency, RateLimit, RateState
from api.govuk import objects as govuk_objects
from api.govuk.auth import notify_service_for
from api.govuk.validation import EMAIL, SMS, parse_send
from api.lookup import lookup, notify_lookup
from api.rate_limiter import RateLimiter
from api.template_cache import TemplateVersion
from api.writer import RedisWriter
from shared import keys
from shared.codec import join_array
from shared.ids import new_stem
from shared.metrics import ACCEPTED
from shared.schemas import (
    BRIEF_EXAMPLE,
    BRIEF_MULTIPLE_EXAMPLE,
    NotificationIn,
    NotificationListIn,
    NotificationOut,
    limited_notification,
    notification_list,
)

# The handlers take only the request: FastAPI's dependency injection costs more per request than the whole
# write path, so `serve` reads the app's state and checks the API key itself. OpenAPI still shows the
# API-key requirement through `openapi_extra`.
router = APIRouter(prefix="/notifications/v1", tags=["notifications"])
_SECURED: dict[str, Any] = {"security": [{"ApiKey": []}]}

JSON = "application/json"
_ERROR = {"content": {JSON: {"example": {"detail": "..."}}}}
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: {"description": "Missing, unknown or revoked API key", **_ERROR}}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_AUTH_ERRORS,
    400: {"description": "Idempotency-Key empty, longer than 255 characters or not printable ASCII", **_ERROR},
    409: {"description": "A request with this Idempotency-Key is still in progress", **_ERROR},
    410: {
        "description": "A retry with an Idempotency-Key whose first request's notifications are no longer kept",
        **_ERROR,
    },
    413: {
        "description": "Body larger than MAX_BODY_BYTES, notifications larger than MAX_QUEUED_BYTES, or more "
        "notifications than the service's whole rate limit per minute",
        **_ERROR,
    },
    429: {"description": "The service's rate limit is reached; retry after `Retry-After` seconds", **_ERROR},
    415: {"description": "Body is not JSON", **_ERROR},
    503: {"description": "Redis unavailable; retry after `Retry-After` seconds", **_ERROR},
}


_IDEMPOTENCY_KEY_DOC = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 255},
    "description": "Retry safely: the same key with the same body within IDEMPOTENCY_TTL_SECONDS gets the first "
    "answer again (with `Idempotent-Replayed: true`) and queues nothing; with another body, a 422; a 410 once the "
    "first request's notifications are no longer kept (RETENTION_DAYS)",
}


def _body_doc(schema: dict[str, Any], example: Any) -> dict[str, Any]:
    return {
        **_SECURED,
        "parameters": [_IDEMPOTENCY_KEY_DOC],
        "requestBody": {"required": True, "content": {JSON: {"schema": schema, "example": example}}},
    }


def _body_error(exc: ValidationError) -> RequestValidationError:
    """Report pydantic's errors the way FastAPI reports body errors (`loc` starts with "body").

    How errors are then shown (no echo of unparsable bodies, readable pattern messages) is `api.handlers`'s job.
    """
    errors = exc.errors(include_url=False)
    for error in errors:
        error["loc"] = ("body", *error["loc"])
    return RequestValidationError(errors)


#: The route templates of the three notification routes (also the `route` label of the request metrics).
SINGLE = f"{router.prefix}/"
MULTIPLE = f"{router.prefix}/multiple"
ONE = f"{router.prefix}/{{notification_id}}"
#: The GOV.UK Notify v2 routes served here (`api.routes.notify_v2` declares them for the docs).
V2_PREFIX = "/v2/notifications"
V2_EMAIL = f"{V2_PREFIX}/email"
V2_SMS = f"{V2_PREFIX}/sms"
V2_ONE = f"{V2_PREFIX}/{{notification_id}}"
_NOTIFY_SENDS = {V2_EMAIL: EMAIL, V2_SMS: SMS}
_NOTIFY_ROUTES = frozenset({V2_EMAIL, V2_SMS, V2_ONE})
Headers = list[tuple[bytes, bytes]]
_JSON_HEADER = (b"content-type", JSON.encode())
_REPLAYED_HEADER = (b"idempotent-replayed", b"true")


#: The longest Idempotency-Key accepted (draft-ietf-httpapi-idempotency-key-header leaves the limit to the server).
MAX_IDEMPOTENCY_KEY_LENGTH = 255


def _idempotency_key(value: bytes) -> str:
    """Return an Idempotency-Key header's key: its sf-string quotes, if any, removed; 400 unless printable ASCII."""
    if len(value) >= 2 and value[0] == value[-1] == 0x22:  # '"': the draft's form; the bare form is common too
        value = value[1:-1]
    key = value.decode("latin-1")
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not (key.isascii() and key.isprintable()):
        raise BadRequestError(
            f"the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters"
        )
    return key


def _rate_limit(
    limits: RateLimiter, per_minute: int, service_id: UUID, cost: int, shard: keys.Shard, shards: int, *, keyed: bool
) -> RateLimit:
    """Return the request's place in the bucket of its service, limited to `per_minute`, or refuse it here.

    A `keyed` request (with an Idempotency-Key) is left to Redis: if it is a retry, its first answer is given again
    whatever the bucket holds.

    Raises:
        BadRequestError: the request holds more notifications than the whole limit (413: it never fits).
        RateLimitedError: Redis refused the service lately and its bucket cannot hold `cost` tokens yet (429).
    """
    if cost > per_minute:
        raise BadRequestError(
            f"the request holds {cost} notifications, more than your service's whole rate limit of {per_minute} "
            "per minute: send at most that many per request",
            status_code=413,
        )
    refused = None if keyed else limits.refused_before(service_id, cost, shard.index)
    if refused is not None:
        raise _rate_limited(refused, cost)
    # each shard counts in a bucket of its own, refilled at its share of the limit
    return RateLimit(shard.bucket_key(str(service_id)), per_minute, cost, per_minute / shards)


def _items_in(raw: bytes) -> int | None:
    """Return how many items a JSON array body holds, or None if it is not one (validation will say why)."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return len(parsed) if isinstance(parsed, list) else None


def _rate_limited(state: RateState, cost: int) -> RateLimitedError:
    retry_after = max(1, math.ceil(state.wait_ms / 1000))
    return RateLimitedError(
        f"your service's rate limit of {state.limit} notifications per minute is reached: {state.remaining} left, "
        f"this request needs {cost}; nothing was queued, retry after {retry_after} s",
        retry_after,
        rate_limiter.rate_headers(state),
        state.limit,
    )


#: Each POST route's mark in an Idempotency-Key's fingerprint: the same key and body on another route is another
#: request.
_ROUTE_MARKS = {SINGLE: b"S", MULTIPLE: b"M", V2_EMAIL: b"E", V2_SMS: b"T"}


async def _ingest(
    state: State,
    route: str,
    service_id: UUID,
    body: bytes,
    request_id: str,
    idempotency_key: str | None,
    stem: str,
    shard: keys.Shard,
    root: str = "",
) -> tuple[bytes, str, bool, RateState | None]:
    """The write path after authentication: validate → templates → rate limit → ids → Redis.

    The request's notification ids share `stem`, which also names `shard`, the one it is queued in.

    Returns the answer's body (the notification, or the array for `/multiple`), the first id, whether it is
    the first answer given again because `idempotency_key` was used before with the same body, and the service's
    token bucket after the write (None when the service is not rate-limited). `root` is the base URL of a v2
    route's answer.

    Raises:
        RateLimitedError: the service is past its rate limit; nothing was queued (429).
    """
    settings = state.settings
    listed = route == MULTIPLE  # the body is a list rather than one notification
    notification_type, reference = _NOTIFY_SENDS.get(route), None
    if notification_type is not None:
        send = parse_send(body, notification_type, service_id, settings)
        template = await state.templates.resolve(service_id, send.template_id, None)
        resolved: list[TemplateVersion | None] = [govuk_objects.check_template(template, send)]
        items: Sequence[Recipient] = [send]
        reference = send.reference
    else:
        try:
            if listed:
                native = notification_list(settings).validate_json(body)
            else:
                native = [limited_notification(settings).model_validate_json(body)]
        except ValidationError as exc:
            raise _body_error(exc) from None
        resolved = await templates_for(native, service_id, state.templates, listed=listed)
        items = native
    limits: RateLimiter = state.rate_limits
    writer: RedisWriter = state.writer
    per_minute = limits.known_limit(service_id)
    if per_minute is None:
        per_minute = await limits.limit_for(service_id)
    rate_limit = None
    if per_minute:
        rate_limit = _rate_limit(
            limits, per_minute, service_id, len(items), shard, writer.layout.count, keyed=idempotency_key is not None
        )
    service = str(service_id)
    ids, docs = accept(
        items,
        service,
        resolved,
        settings,
        stem,
        listed=listed,
        notification_type=notification_type,
        reference=reference,
    )
    entry = join_array(docs)
    answer = entry if listed else docs[0]
    if notification_type is not None:
        answer = orjson.dumps(govuk_objects.created(orjson.loads(answer), root))
    keyed = fingerprint = None
    if idempotency_key is not None:
        fingerprint = idempotency.fingerprint(_ROUTE_MARKS[route], body)
        record_key = shard.idempotency_key(service, idempotency_key)
        kept = idempotency.record(fingerprint, stem, len(ids), root if notification_type is not None else "")
        keyed = Idempotency(record_key, kept, settings.idempotency_ttl_seconds)
    sent_at = time.monotonic()
    try:
        written = await writer.write(
            entry, shard.request_key(service, stem), request_id, keyed, rate_limit, shard.index
        )
    except WriteOutcomeUnknownError as exc:
        retry = (
            "a retry with the same Idempotency-Key is safe"
            if idempotency_key is not None
            else "a plain retry may queue it twice"
        )
        prefix = V2_PREFIX if notification_type else router.prefix
        if isinstance(exc, ReplicasUnconfirmedError):  # it is queued, perhaps not safely yet
            raise ReplicasUnconfirmedError(
                f"{exc.detail}. GET {prefix}/{ids[0]} answers 200 while Redis has it; {retry}"
            ) from exc
        raise WriteOutcomeUnknownError(
            "Redis did not confirm the write within REDIS_TIMEOUT_SECONDS: the request may or may not have been "
            f"queued. GET {prefix}/{ids[0]} answers 200 once Redis has it (then all {len(ids)} of its "
            f"notifications were queued) and 404 if it was not; {retry}"
        ) from exc
    if written.rate is not None:
        limits.note(written.rate, service_id, sent_at, shard.index)
        if not written.rate.allowed:
            raise _rate_limited(written.rate, len(ids))
    found = written.record
    if found is None:
        ACCEPTED.inc(len(ids))
        return answer, ids[0], False, written.rate
    # a record is found only for a keyed request
    assert fingerprint is not None
    assert idempotency_key is not None
    answer, first_id = await idempotency.replay(state, found, fingerprint, service_id, idempotency_key, listed=listed)
    return answer, first_id, True, written.rate


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


async def serve(
    state: State, route: str, scope: Scope, receive: Receive, notification_id: UUID | None = None
) -> tuple[int, bytes, Headers]:
    """Answer one of the notification routes from the raw ASGI request: (status, body, all headers).

    The hot path (`api.hotpath`) calls this for every notification request, with the scope as the server gave
    it; errors are raised (`api.handlers` maps them), as from any route.
    """
    request_id: str = scope.get("notify.request_id", "")
    authorization = content_type = idempotency_header = None
    for name, value in scope["headers"]:  # the first of a repeated header counts, as in Starlette's Headers
        if name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
        elif name == b"content-type" and content_type is None:
            content_type = value.decode("latin-1")
        elif name == b"idempotency-key" and idempotency_header is None:
            idempotency_header = value
    notify = route in _NOTIFY_ROUTES
    service_id = await (notify_service_for if notify else service_for)(state, authorization)
    root = base_url(scope, state.settings.public_base_url) if notify else ""
    if route in (ONE, V2_ONE):
        assert notification_id is not None
        if notify:
            body = await notify_lookup(state, service_id, notification_id, root)
        else:
            body = await lookup(state, service_id, notification_id)
        status, headers = 200, [_JSON_HEADER]
    else:
        idempotency_key = None if idempotency_header is None else _idempotency_key(idempotency_header)
        layout: keys.Layout = state.writer.layout
        # the request's ids, and so its shard: every retry with the same Idempotency-Key goes to the same shard
        stem = new_stem(
            None if idempotency_key is None else layout.shard_for_idempotency_key(str(service_id), idempotency_key),
            layout.count,
        )
        shard = layout.shard_of_stem(stem)
        # not a single token: refused before its body is read (unless it may be a retry whose first answer Redis has);
        # a list is counted first, below: one larger than the whole limit is a 413 even while the bucket is empty
        if (
            route != MULTIPLE
            and idempotency_key is None
            and (refused := state.rate_limits.refused_before(service_id, 1, shard.index))
        ):
            raise _rate_limited(refused, 1)
        raw = await read_json_body(content_type, receive, state.settings.max_body_bytes)
        if route == MULTIPLE and idempotency_key is None and state.rate_limits.knows(service_id, shard.index):
            # a service near its limit: its list's cost is counted (orjson: ~1/5 of validating it) and a list that
            # cannot fit is refused before it is validated, which a flood past its limit would otherwise make the
            # API do for every refused request
            cost = _items_in(raw)
            if cost and (refused := state.rate_limits.refused_before(service_id, cost, shard.index)):
                raise _rate_limited(refused, cost)
        body, first_id, replayed, rate = await _ingest(
            state, route, service_id, raw, request_id, idempotency_key, stem, shard, root
        )
        status, headers = 201, [_JSON_HEADER]
        if route == SINGLE:
            headers.append((b"location", f"{router.prefix}/{first_id}".encode()))
        if replayed:
            headers.append(_REPLAYED_HEADER)
        if rate is not None:
            headers += rate_limiter.rate_headers(rate)
    headers.append((b"content-length", str(len(body)).encode()))
    return status, body, headers


async def respond(request: Request, route: str, notification_id: UUID | None = None) -> Response:
    """Serve a notification route for FastAPI (the hot path normally answers before FastAPI sees it)."""
    status, body, headers = await serve(request.app.state, route, request.scope, request.receive, notification_id)
    response = Response(body, status_code=status)
    response.raw_headers = headers
    return response


@router.post(
    "/",
    status_code=201,
    response_model=NotificationOut,
    responses=_WRITE_ERRORS,
    openapi_extra=_body_doc(NotificationIn.model_json_schema(), BRIEF_EXAMPLE),
    summary="Accept one notification",
)
async def create_notification(request: Request) -> Response:
    """Validate one notification, queue it in Redis and return it with its id (201)."""
    return await respond(request, SINGLE)


@router.post(
    "/multiple",
    status_code=201,
    response_model=list[NotificationOut],
    responses=_WRITE_ERRORS,
    openapi_extra=_body_doc(NotificationListIn.json_schema(), BRIEF_MULTIPLE_EXAMPLE),
    summary="Accept a list of notifications, all or nothing",
)
async def create_notifications(request: Request) -> Response:
    """Validate 1..MAX_BATCH_ITEMS notifications, queue them in Redis as one entry, return them in order (201)."""
    return await respond(request, MULTIPLE)


@router.get(
    "/{notification_id}",
    response_model=NotificationOut,
    responses={**_AUTH_ERRORS, 404: {"description": "No such notification in your service", **_ERROR}},
    summary="Get one notification, queued or stored",
)
async def get_notification(request: Request, service_id: ServiceId, notification_id: UUID) -> Response:
    """Return a notification from the Redis cache or, once drained and expired there, from Postgres."""
    # reached for an id that is not in the canonical form (the hot path serves those): FastAPI runs the key check
    # (the dependency) before it validates the id, so a request without a valid key is a 401, never a 422
    return await respond(request, ONE, notification_id)
