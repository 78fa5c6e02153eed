"""The native notification routes, declared for FastAPI and the OpenAPI docs; `api.ingest.serve` does their work.

The hot path (`api.middleware.hotpath`) answers these routes before FastAPI sees them; FastAPI reaches them only
for what the hot path passes on (a GET whose id is not in the canonical form).
"""

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request, Response

from api.auth import ServiceId
from api.idempotency import MAX_IDEMPOTENCY_KEY_LENGTH
from api.ingest import JSON, MULTIPLE, NATIVE_PREFIX, ONE, SINGLE, respond
from shared.schemas import BRIEF_EXAMPLE, BRIEF_MULTIPLE_EXAMPLE, NotificationIn, NotificationListIn, NotificationOut

# The handlers take only the request: FastAPI's dependency injection costs more per request than the whole
# write path, so `api.ingest.serve` reads the app's state and checks the API key itself. OpenAPI still shows the
# API-key requirement through `openapi_extra`.
router = APIRouter(prefix=NATIVE_PREFIX, tags=["notifications"])
_SECURED: dict[str, Any] = {"security": [{"ApiKey": []}]}

_ERROR = {"content": {JSON: {"example": {"detail": "..."}}}}
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: {"description": "Missing, unknown or revoked API key", **_ERROR}}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_AUTH_ERRORS,
    400: {
        "description": f"Idempotency-Key empty, longer than {MAX_IDEMPOTENCY_KEY_LENGTH} characters or not printable "
        "ASCII",
        **_ERROR,
    },
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
    "schema": {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH},
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
