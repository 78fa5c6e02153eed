"""Native jobs (`/notifications/v1/jobs`), declared here; the work is `api.native_jobs` and `api.jobs`.

A job's body is CSV (`text/csv`) or NDJSON (`application/x-ndjson`), streamed: read as it arrives, its rows
COPYed into Postgres in one transaction as they are checked, so its length is bounded by MAX_JOB_ROWS, not
MAX_BODY_BYTES (`api.middleware.body` lets this one route's body through). Authenticated by the service's API key,
answers and errors in the native shapes. Declared before `api.routes.notifications`, whose
`GET /notifications/v1/{notification_id}` would otherwise take `jobs` for an id.
"""

from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Header, Query, Request, Response

from api import jobs, native_jobs
from api.auth import ServiceId
from api.errors import ConflictError, NotFoundError
from api.govuk.bulk import MAX_NAME_LENGTH
from api.idempotency import parse_key
from api.middleware.body import JOBS_PATH as PATH

router = APIRouter(prefix=PATH, tags=["jobs"])
JSON = "application/json"
#: Jobs one page of `GET /notifications/v1/jobs` lists.
PAGE_SIZE = 100

_ERROR = {"content": {JSON: {"example": {"detail": "..."}}}}
_BODY_DOC: dict[str, Any] = {
    "security": [{"ApiKey": []}],
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {"schema": {"type": "string"}, "example": "to,name\nalice@example.com,Alice\n"},
            "application/x-ndjson": {
                "schema": {"type": "string"},
                "example": '{"to": "alice@example.com", "personalization": {"name": "Alice"}}\n',
            },
        },
    },
}


def _json(body: object, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type=JSON, headers=headers)


@router.post(
    "",
    status_code=201,
    openapi_extra=_BODY_DOC,
    responses={
        400: {"description": "A file that cannot be read as a whole (header, encoding, too many rows)", **_ERROR},
        408: {"description": "The upload sent nothing for 60 s; nothing was stored", **_ERROR},
        409: {"description": "A job with this Idempotency-Key is still being stored", **_ERROR},
        413: {"description": "More rows than the service's whole rate limit per minute", **_ERROR},
        415: {"description": "The body is neither CSV nor NDJSON", **_ERROR},
        422: {
            "description": "Rows that are not valid (listed), an unknown template, scheduled_for out of bounds, or "
            "an Idempotency-Key used with another request"
        },
        503: {"description": "Postgres unreachable; nothing was stored", **_ERROR},
    },
    summary="Send one template to every row of a CSV or NDJSON file, all or nothing",
)
async def create_job(
    request: Request,
    service_id: ServiceId,
    template_id: Annotated[UUID, Query(description="The template every row is sent with (its latest version)")],
    name: Annotated[str, Query(min_length=1, max_length=MAX_NAME_LENGTH)] = "job",
    scheduled_for: Annotated[
        str | None, Query(description="ISO 8601; at most JOBS_MAX_SCHEDULE_HOURS_AHEAD ahead; no zone: UTC")
    ] = None,
    idempotency: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    """Store every row as a notification once all are valid (201 `stored`), or keep them until `scheduled_for`."""
    key = None if idempotency is None else parse_key(idempotency.encode("latin-1"))
    stored = await native_jobs.create_native_job(
        request.app.state,
        service_id,
        template_id,
        name,
        scheduled_for,
        request.headers.get("content-type"),
        request.stream(),
        idempotency_key=key,
        request_mark=f"POST {PATH}?{request.url.query} {request.headers.get('content-type')}".encode(),
    )
    headers = {"Idempotent-Replayed": "true"} if stored.replayed else None
    return _json(native_jobs.native_job(stored.job), 201, headers)


@router.get("", summary="List your service's jobs, newest first")
async def list_jobs(
    request: Request,
    service_id: ServiceId,
    older_than: Annotated[UUID | None, Query(description="The last job of the previous page")] = None,
) -> Response:
    """List up to 100 of your service's jobs, newest first; `older_than=<job id>` for the next page."""
    found = await jobs.list_jobs(request.app.state, service_id, PAGE_SIZE, older_than)
    if found is None:
        raise NotFoundError(f"your service has no job {older_than}")
    return _json({"jobs": [native_jobs.native_job(job, counts=True) for job in found]})


@router.get("/{job_id}", summary="Get one job with its queued and stored counts")
async def get_job(request: Request, service_id: ServiceId, job_id: UUID) -> Response:
    """Return a job of your service (made through either route) with how many of its rows are queued and stored."""
    job = await jobs.get_job(request.app.state, service_id, job_id)
    if job is None:
        raise NotFoundError(f"your service has no job {job_id}")
    return _json(native_jobs.native_job(job, counts=True))


@router.post("/{job_id}/cancel", summary="Cancel a scheduled job that has not started")
async def cancel_job(request: Request, service_id: ServiceId, job_id: UUID) -> Response:
    """Cancel a scheduled job before its time (its kept rows deleted); 409 for a job that started or is done."""
    job, cancelled = await jobs.cancel_job(request.app.state, service_id, job_id)
    if job is None:
        raise NotFoundError(f"your service has no job {job_id}")
    if not cancelled:
        state = native_jobs.native_job(job)["status"]
        why = "its time has come: it is being stored or about to be" if state == "scheduled" else f"it is {state}"
        raise ConflictError(f"only a scheduled job whose time has not come can be cancelled; {why}")
    return _json(native_jobs.native_job(job, counts=True))
