"""The notification routes: the write path (auth → validate → id → Redis → 201) and the read-through GET.

POST parses the raw body once, checks any template against the personalization, gives the request's
notifications time-ordered UUIDv7 ids with one shared stem (`shared.ids`), serializes each once, and hands the
bytes to the group-commit writer: one stream entry and one cache key per request. The 201 goes out after Redis
acknowledged. GET looks in the request's cached array first (notifications not yet drained, or drained a moment
ago) and then in Postgres. Every route works
within the service of the caller's API key; another service's notification is a 404.
"""

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.auth import authenticate
from api.body import read_json_body
from api.errors import NotFoundError
from api.template_cache import TemplateCache, TemplateVersion
from shared import keys, queries
from shared.codec import encode_notification, join_array
from shared.ids import request_ids, stem_and_index
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
from shared.templating import render

# The handlers take only the request: FastAPI's dependency injection costs more per request than the whole
# write path, so they read `request.app.state` and call `authenticate` themselves. OpenAPI still shows the
# API-key requirement through `openapi_extra`.
router = APIRouter(prefix="/notifications/v1", tags=["notifications"])
_SECURED: dict[str, Any] = {"security": [{"ApiKey": []}]}

JSON = "application/json"
_ERROR = {"content": {JSON: {"example": {"detail": "..."}}}}
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: {"description": "Missing, unknown or revoked API key", **_ERROR}}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_AUTH_ERRORS,
    413: {"description": "Body larger than MAX_BODY_BYTES", **_ERROR},
    415: {"description": "Body is not JSON", **_ERROR},
    503: {"description": "Redis unavailable; retry after `Retry-After` seconds", **_ERROR},
}


def _body_doc(schema: dict[str, Any], example: Any) -> dict[str, Any]:
    return {
        **_SECURED,
        "requestBody": {"required": True, "content": {JSON: {"schema": schema, "example": example}}},
    }


def _body_error(exc: ValidationError) -> RequestValidationError:
    """Report pydantic's errors the way FastAPI reports body errors (`loc` starts with "body").

    How errors are then shown (no echo of unparsable bodies, readable pattern messages) is `api.errors`'s job.
    """
    errors = exc.errors(include_url=False)
    for error in errors:
        error["loc"] = ("body", *error["loc"])
    return RequestValidationError(errors)


async def _templates_for(
    items: list[NotificationIn], service_id: UUID, templates: TemplateCache, *, listed: bool
) -> list[TemplateVersion | None]:
    """Resolve each item's template and check its personalization; raise one 422 naming every problem.

    `listed` says the body was a list, so that error locations name the item (`["body", 3, ...]`).
    """
    resolved: list[TemplateVersion | None] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where: tuple[Any, ...] = ("body", index) if listed else ("body",)
        if item.template_id is None:
            resolved.append(None)
            continue
        template = await templates.resolve(service_id, item.template_id, item.template_version)
        resolved.append(template)
        if template is None:
            what = f"version {item.template_version} of " if item.template_version else ""
            errors.append(
                {
                    "type": "unknown_template",
                    "loc": (*where, "template_id"),
                    "msg": f"your service has no {what}template {item.template_id}",
                    "input": str(item.template_id),
                }
            )
            continue
        values = item.personalization or {}
        missing = [name for name in template.placeholders if name not in values]
        if missing:
            errors.append(
                {
                    "type": "missing_personalization",
                    "loc": (*where, "personalization"),
                    "msg": "missing personalization for template placeholders: " + ", ".join(missing),
                    "input": values,
                    "ctx": {"missing": missing},
                }
            )
    if errors:
        raise RequestValidationError(errors)
    return resolved


def _accept(
    items: list[NotificationIn],
    service_id: UUID,
    templates: list[TemplateVersion | None],
    max_rendered: int,
    *,
    listed: bool,
) -> tuple[list[str], list[bytes]]:
    """Give each notification its id and timestamps, render its template, and serialize it once.

    Raises:
        RequestValidationError: a rendered subject and body together are longer than `max_rendered` (422).
    """
    now = datetime.now(UTC).isoformat()  # formatted once for the whole request
    service = str(service_id)
    ids = request_ids(len(items))
    docs = []
    for notification_id, item, template in zip(ids, items, templates, strict=True):
        values = item.personalization or {}
        if template is None:
            docs.append(encode_notification(notification_id, service, item.to, values, now))
        else:
            subject, body = render(template.subject, values), render(template.body, values)
            if len(subject or "") + len(body or "") > max_rendered:
                where = ("body", len(docs)) if listed else ("body",)
                raise RequestValidationError(
                    [
                        {
                            "type": "rendered_too_long",
                            "loc": (*where, "personalization"),
                            "msg": f"the rendered template is longer than {max_rendered} characters",
                        }
                    ]
                )
            docs.append(
                encode_notification(
                    notification_id,
                    service,
                    item.to,
                    values,
                    now,
                    template={"id": str(template.template_id), "version": template.version},
                    subject=subject,
                    body=body,
                )
            )
    return ids, docs


async def _ingest(request: Request, *, listed: bool) -> tuple[list[str], list[bytes], bytes]:
    """The write path: authenticate → validate → templates → ids → Redis. Returns ids, documents, their array.

    `listed` says the body is a list (`/multiple`) rather than one notification.
    """
    state = request.app.state
    service_id = await authenticate(request)
    body = await read_json_body(request, state.settings.max_body_bytes)
    try:
        if listed:
            items = notification_list(state.settings).validate_json(body)
        else:
            items = [limited_notification(state.settings).model_validate_json(body)]
    except ValidationError as exc:
        raise _body_error(exc) from None
    resolved = await _templates_for(items, service_id, state.templates, listed=listed)
    ids, docs = _accept(items, service_id, resolved, state.settings.max_rendered_length, listed=listed)
    entry = join_array(docs)
    await state.writer.write(entry, keys.cache_key(str(service_id), ids[0]), request.scope.get("notify.request_id", ""))
    ACCEPTED.inc(len(ids))
    return ids, docs, entry


def _pick(request_json: bytes | None, notification_id: UUID) -> bytes | None:
    """Return one notification's JSON out of its request's cached array (None if it is not there)."""
    if request_json is None:
        return None
    _, index = stem_and_index(notification_id)
    docs = orjson.loads(request_json)
    if index < len(docs) and docs[index]["id"] == str(notification_id):
        return orjson.dumps(docs[index])
    return None


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
    ids, docs, _ = await _ingest(request, listed=False)
    return Response(docs[0], status_code=201, media_type=JSON, headers={"Location": f"{router.prefix}/{ids[0]}"})


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
    _, _, entry = await _ingest(request, listed=True)
    return Response(entry, status_code=201, media_type=JSON)


@router.get(
    "/{notification_id}",
    response_model=NotificationOut,
    responses={**_AUTH_ERRORS, 404: {"description": "No such notification in your service", **_ERROR}},
    openapi_extra=_SECURED,
    summary="Get one notification, queued or stored",
)
async def get_notification(request: Request, notification_id: UUID) -> Response:
    """Return a notification from the Redis cache or, once drained and expired there, from Postgres."""
    state = request.app.state
    service_id = await authenticate(request)
    cached = _pick(await state.redis.get(keys.cache_key(str(service_id), str(notification_id))), notification_id)
    if cached is None:
        async with state.engine.connect() as conn:
            cached = await queries.fetch_notification(conn, notification_id, service_id)
    if cached is None:
        raise NotFoundError(f"notification {notification_id} not found")
    return Response(cached, media_type=JSON)
