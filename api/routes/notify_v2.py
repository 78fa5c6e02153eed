"""GOV.UK Notify's public API v2, so that Notify's official clients work against this service unchanged.

The sends and the GET by id are `api.ingest`'s (declared here for the docs); the rest are ordinary routes of the
caller's service, authenticated by Notify's JWT: the list of stored notifications (a notification still queued is
found by id but not listed until drained), templates and previews, and a 400 for letters. Errors are Notify's
(`api.handlers`).
"""

from typing import Annotated, Any
from urllib.parse import urlencode
from uuid import UUID

import orjson
from fastapi import APIRouter, Path, Request, Response

from api.deps import EngineDep
from api.errors import NotifyError, NotifyNotFoundError, NotifyValidationError
from api.govuk.auth import NotifyServiceId
from api.govuk.objects import missing_personalisation, notification, preview, template
from api.govuk.validation import exact_personalisation, personalisation_values, reference_error
from api.ingest import V2_EMAIL, V2_ONE, V2_SMS, base_url, respond
from shared import queries
from shared.schemas import INT4_MAX
from shared.templating import placeholders

router = APIRouter(prefix="/v2", tags=["GOV.UK Notify v2"])

JSON = "application/json"
#: Notify's notification statuses (a filter of the list; this service's notifications are all `created`).
STATUSES = (
    "cancelled", "created", "sending", "sent", "delivered", "pending", "failed", "technical-failure",
    "temporary-failure", "permanent-failure", "pending-virus-check", "validation-failed", "virus-scan-failed",
    "accepted", "received",
)  # fmt: skip
TEMPLATE_TYPES = ("sms", "email", "letter")
_LIST_PARAMETERS = frozenset({"template_type", "status", "reference", "older_than", "include_jobs"})
_NOTIFY_ERROR: dict[str, Any] = {
    "content": {JSON: {"example": {"status_code": 400, "errors": [{"error": "ValidationError", "message": "..."}]}}}
}
_SEND_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Not valid, template unsuitable or missing personalisation", **_NOTIFY_ERROR},
    403: {"description": "Token not valid (401: missing)", **_NOTIFY_ERROR},
    429: {"description": "Rate limit reached", **_NOTIFY_ERROR},
}
_SEND_DOC = {
    "security": [{"NotifyJWT": []}],
    "requestBody": {"required": True, "content": {JSON: {"schema": {"type": "object"}}}},
}


def _json(body: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type=JSON)


def _uuid(value: str, name: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise NotifyValidationError([f"{name} is not a valid UUID"]) from None


@router.post("/notifications/email", status_code=201, responses=_SEND_ERRORS, openapi_extra=_SEND_DOC)
async def send_email(request: Request) -> Response:
    """Send an email with a template of your service (Notify's `send_email_notification`)."""
    return await respond(request, V2_EMAIL)


@router.post("/notifications/sms", status_code=201, responses=_SEND_ERRORS, openapi_extra=_SEND_DOC)
async def send_sms(request: Request) -> Response:
    """Send a text message with a template of your service (Notify's `send_sms_notification`)."""
    return await respond(request, V2_SMS)


@router.post("/notifications/letter", status_code=400, responses=_SEND_ERRORS)
async def send_letter(service_id: NotifyServiceId) -> Response:
    """Letters are not supported: always a 400."""
    raise NotifyError("Letters are not supported by this service: send emails or text messages")


@router.get("/notifications/{notification_id}")
async def get_notification(
    request: Request, notification_id: Annotated[str, Path()], service_id: NotifyServiceId
) -> Response:
    """Return one notification of your service, still queued or stored (read-your-write)."""
    # reached for an id that is not a canonical UUID (the hot path serves those): the token is checked (the
    # dependency) before the id, so that nobody learns anything of the API without a valid token
    return await respond(request, V2_ONE, _uuid(notification_id, "notification_id"))


def _list_filters(request: Request) -> queries.ListingFilter:
    """Check the list's query as Notify does; return what it asks for."""
    query = request.query_params
    errors = []
    unexpected = [name for name in query if name not in _LIST_PARAMETERS]
    if unexpected:
        errors.append(f"Additional properties are not allowed ({', '.join(unexpected)} was unexpected)")
    types, statuses = query.getlist("template_type"), query.getlist("status")
    errors += [
        f"template_type {t} is not one of [{', '.join(TEMPLATE_TYPES)}]" for t in types if t not in TEMPLATE_TYPES
    ]
    errors += [f"status {s} is not one of [{', '.join(STATUSES)}]" for s in statuses if s not in STATUSES]
    older_than = None
    if "older_than" in query:
        try:
            older_than = UUID(query["older_than"])
        except ValueError:
            errors.append("older_than is not a valid UUID")
    reference = query.get("reference")
    if reference is not None and (error := reference_error(reference)):
        errors.append(error)
    include_jobs = query.get("include_jobs", "false").lower()
    if include_jobs not in ("true", "false"):
        errors.append(f"include_jobs {query['include_jobs']} is not of type boolean")
    if errors:
        raise NotifyValidationError(errors)
    return queries.ListingFilter(types, statuses, reference, older_than, include_jobs == "true")


@router.get("/notifications")
async def list_notifications(request: Request, service_id: NotifyServiceId, engine: EngineDep) -> Response:
    """List your service's stored notifications, newest first, 250 a page; `links.next` names the next page.

    Filters: `template_type` and `status` (repeatable), `reference`, `older_than` (a notification id). Lists what
    is stored in Postgres; a notification still queued in Redis shows up once drained (GET by id finds it at once).
    Bulk jobs' notifications are listed only with `include_jobs=true`, as GC Notify lists them.
    """
    listing = _list_filters(request)
    docs: list[bytes] = []
    if listing.can_match():  # else empty (`status=delivered`): no query, no scan
        async with engine.connect() as conn:
            docs = await queries.list_notify_notifications(conn, service_id, listing)
    root = base_url(request.scope, request.app.state.settings.public_base_url)
    found = [notification(orjson.loads(doc), root) for doc in docs]
    params = list(request.query_params.multi_items())
    current = f"{root}v2/notifications" + (f"?{urlencode(params)}" if params else "")
    links = {"current": current}
    if found:
        following = [(name, value) for name, value in params if name != "older_than"] + [
            ("older_than", found[-1]["id"])
        ]
        links["next"] = f"{root}v2/notifications?{urlencode(following)}"
    return _json({"notifications": found, "links": links})


async def _template_row(engine: EngineDep, service_id: UUID, template_id: str, version: int | None = None) -> Any:
    async with engine.connect() as conn:
        row = await queries.get_template_version(conn, service_id, _uuid(template_id, "template_id"), version)
    if row is None:
        raise NotifyNotFoundError()
    return row


@router.get("/template/{template_id}")
async def get_template(template_id: str, service_id: NotifyServiceId, engine: EngineDep) -> Response:
    """Return a template of your service at its latest version."""
    return _json(template(await _template_row(engine, service_id, template_id)))


@router.get("/template/{template_id}/version/{version}")
async def get_template_version(
    template_id: str, version: Annotated[int, Path(ge=1, le=INT4_MAX)], service_id: NotifyServiceId, engine: EngineDep
) -> Response:
    """Return one version of a template of your service."""
    return _json(template(await _template_row(engine, service_id, template_id, version)))


@router.get("/templates")
async def list_templates(request: Request, service_id: NotifyServiceId, engine: EngineDep) -> Response:
    """Return your service's templates at their latest versions, of one `type` if given."""
    template_type = request.query_params.get("type")
    if template_type is not None and template_type not in TEMPLATE_TYPES:
        raise NotifyValidationError([f"type {template_type} is not one of [{', '.join(TEMPLATE_TYPES)}]"])
    async with engine.connect() as conn:
        rows = await queries.list_templates(conn, service_id, template_type)
    return _json({"templates": [template(row) for row in rows]})


@router.post("/template/{template_id}/preview")
async def preview_template(
    request: Request, template_id: str, service_id: NotifyServiceId, engine: EngineDep
) -> Response:
    """Render the latest version of a template with `{"personalisation": {...}}`; 400 naming missing values."""
    try:
        raw = await request.body() or b"{}"
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise NotifyError("Invalid JSON supplied in POST data") from None
    if not isinstance(body, dict):
        raise NotifyValidationError(["POST data is not of type object"])
    errors: list[str] = []
    settings = request.app.state.settings
    values = personalisation_values(body.get("personalisation"), settings, errors)
    if errors:
        raise NotifyValidationError(errors)
    values = exact_personalisation(values, body, raw, settings)
    row = await _template_row(engine, service_id, template_id)
    missing = missing_personalisation(placeholders(row.subject, row.body), values)
    if missing is not None:
        raise missing
    return _json(preview(row, values, settings.max_rendered_length))
