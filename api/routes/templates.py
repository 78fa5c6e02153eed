"""Templates of the caller's service: create (version 1), update (a new version), get (latest or a version), list.

Versions are immutable, so a notification always shows the text it was rendered from. A template's type (`email`,
with a subject; `sms`, without) is set when it is created and holds for all its versions.
"""

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import Row
from sqlalchemy.exc import IntegrityError

from api.auth import ServiceId
from api.deps import EngineDep
from api.errors import ConflictError, NotFoundError
from shared import queries
from shared.schemas import INT4_MAX, TemplateIn, TemplateOut, TemplateUpdate, subject_error
from shared.templating import placeholders
from shared.tenancy import new_id, utc_now

router = APIRouter(prefix="/templates/v1", tags=["templates"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown or revoked API key"},
    404: {"description": "No such template (or version) in your service"},
}


def _out(row: Row[Any]) -> TemplateOut:
    return TemplateOut.model_validate(
        {**row._mapping, "placeholders": placeholders(row.subject, row.body)}, from_attributes=False
    )


@router.post("/", status_code=201, responses={**_NOT_FOUND, 409: {"description": "Name taken in your service"}})
async def create_template(request: Request, body: TemplateIn, service_id: ServiceId, engine: EngineDep) -> TemplateOut:
    """Create a template; this is its version 1."""
    try:
        async with engine.begin() as conn:
            row = await queries.insert_template(
                conn, new_id(), service_id, body.name, body.subject, body.body, utc_now(), body.type
            )
    except IntegrityError:
        raise ConflictError(f"your service has a template named {body.name!r} already") from None
    request.app.state.templates.remember(row)  # this process's sends use it at once, also should Postgres go down
    return _out(row)


@router.get("/", responses=_NOT_FOUND)
async def list_templates(service_id: ServiceId, engine: EngineDep) -> list[TemplateOut]:
    """List your service's templates, each at its latest version."""
    async with engine.connect() as conn:
        return [_out(row) for row in await queries.list_templates(conn, service_id)]


@router.put("/{template_id}", responses=_NOT_FOUND)
async def update_template(
    request: Request, template_id: UUID, body: TemplateUpdate, service_id: ServiceId, engine: EngineDep
) -> TemplateOut:
    """Add a new version of a template; earlier versions stay as they were."""
    async with engine.begin() as conn:
        template_type = await queries.lock_template(conn, service_id, template_id)
        if template_type is None:
            raise NotFoundError(f"template {template_id} not found")
        error = subject_error(template_type, body.subject)
        if error is not None:
            raise RequestValidationError(
                [
                    {
                        "type": "value_error",
                        "loc": ("body", "subject"),
                        "msg": f"{error} ({template_id} is {template_type})",
                    }
                ]
            )
        row = await queries.add_template_version(conn, service_id, template_id, body.subject, body.body, utc_now())
    request.app.state.templates.remember(row)
    return _out(row)


@router.get("/{template_id}", responses=_NOT_FOUND)
async def get_template(
    template_id: UUID,
    service_id: ServiceId,
    engine: EngineDep,
    version: Annotated[int | None, Query(ge=1, le=INT4_MAX)] = None,
) -> TemplateOut:
    """Return a template at its latest version, or at `?version=N`."""
    async with engine.connect() as conn:
        row = await queries.get_template_version(conn, service_id, template_id, version)
    if row is None:
        what = f"version {version} of template" if version is not None else "template"
        raise NotFoundError(f"{what} {template_id} not found")
    return _out(row)


@router.get("/{template_id}/versions", responses=_NOT_FOUND)
async def list_template_versions(template_id: UUID, service_id: ServiceId, engine: EngineDep) -> list[TemplateOut]:
    """Return every version of a template, oldest first."""
    async with engine.connect() as conn:
        rows = await queries.list_template_versions(conn, service_id, template_id)
    if not rows:
        raise NotFoundError(f"template {template_id} not found")
    return [_out(row) for row in rows]
