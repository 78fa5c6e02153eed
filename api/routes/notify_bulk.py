"""GC Notify's bulk send and its job routes (`/v2/notifications/bulk`), declared here; the work is `api.govuk.jobs`.

Authenticated by Notify's JWT as every v2 route; answers and errors in GC Notify's shapes. Declared before
`api.routes.notify_v2`, whose `GET /v2/notifications/{notification_id}` would otherwise take `bulk` for an id.
"""

from typing import Annotated
from urllib.parse import urlencode
from uuid import UUID

import orjson
from fastapi import APIRouter, Path, Request, Response

from api.errors import NotifyValidationError
from api.govuk import jobs
from api.govuk.auth import NotifyServiceId
from api.ingest import base_url

router = APIRouter(prefix="/v2/notifications/bulk", tags=["GOV.UK Notify v2"])
JSON = "application/json"


def _json(body: object, status_code: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type=JSON)


def _job_id(value: str, name: str = "job_id") -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise NotifyValidationError([f"{name} is not a valid UUID"]) from None


@router.post("", status_code=201, openapi_extra={"security": [{"NotifyJWT": []}]})
async def send_bulk(request: Request, service_id: NotifyServiceId) -> Response:
    """Send one template to up to 50,000 recipients (`rows` or `csv`): all rows are stored, or none (201 `{data}`)."""
    job = await jobs.create_bulk_job(request.app.state, service_id, await request.body())
    return _json({"data": job}, 201)


@router.get("")
async def list_bulk_jobs(request: Request, service_id: NotifyServiceId) -> Response:
    """List your service's bulk jobs, newest first, 250 a page (`older_than=<job id>`; `links.next`)."""
    unexpected = [name for name in request.query_params if name != "older_than"]
    if unexpected:
        raise NotifyValidationError([f"Additional properties are not allowed ({', '.join(unexpected)} was unexpected)"])
    given = request.query_params.get("older_than")
    older_than = None if given is None else _job_id(given, "older_than")
    found = await jobs.list_bulk_jobs(request.app.state, service_id, older_than)
    root = base_url(request.scope, request.app.state.settings.public_base_url)
    current = f"{root}v2/notifications/bulk" + (f"?{urlencode({'older_than': given})}" if given else "")
    links = {"current": current}
    if found:
        links["next"] = f"{root}v2/notifications/bulk?{urlencode({'older_than': found[-1]['id']})}"
    return _json({"bulk_jobs": found, "links": links})


@router.get("/{job_id}")
async def get_bulk_job(job_id: Annotated[str, Path()], request: Request, service_id: NotifyServiceId) -> Response:
    """Return one bulk job of your service with its notifications counted by status (`statistics`)."""
    return _json({"data": await jobs.get_bulk_job(request.app.state, service_id, _job_id(job_id))})


@router.delete("/{job_id}")
async def cancel_bulk_job(job_id: Annotated[str, Path()], request: Request, service_id: NotifyServiceId) -> Response:
    """Cancel a scheduled bulk job that has not started (a job stored at once cannot be cancelled)."""
    return _json({"data": await jobs.cancel_bulk_job(request.app.state, service_id, _job_id(job_id))})
