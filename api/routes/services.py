"""Administration of services, their rate limits and API keys, behind the ADMIN_TOKEN (`Bearer <token>`).

Thin handlers over `shared.tenancy` and `shared.ratelimits`, which the CLI (`python -m shared.cli`) uses too.
"""

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request, Response
from sqlalchemy import Row
from sqlalchemy.exc import IntegrityError

from api.auth import AdminDep
from api.deps import EngineDep, RedisDep, SettingsDep
from api.errors import ConflictError, DisabledError, NotFoundError
from shared import ratelimits, tenancy
from shared.schemas import ApiKeyCreated, ApiKeyIn, ApiKeyOut, ServiceIn, ServiceOut, ServicePatch
from shared.secretbox import NO_SECRET_KEY, SecretBox
from shared.settings import Settings

router = APIRouter(prefix="/services/v1", tags=["administration"], dependencies=[AdminDep])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong admin token"},
    403: {"description": "Admin API disabled (no ADMIN_TOKEN)"},
}


def _service_out(row: Row[Any], settings: Settings) -> ServiceOut:
    own = row.rate_limit_per_minute
    return ServiceOut.model_validate(
        {**row._mapping, "effective_rate_limit_per_minute": settings.rate_limit_per_minute if own is None else own}
    )


@router.post("/", status_code=201, responses={**_ERRORS, 409: {"description": "Name taken"}})
async def create_service(body: ServiceIn, engine: EngineDep, settings: SettingsDep) -> ServiceOut:
    """Create a service (a tenant)."""
    try:
        row = await tenancy.create_service(engine, body.name)
    except IntegrityError:
        raise ConflictError(f"a service named {body.name!r} exists already") from None
    return _service_out(row, settings)


@router.get("/", responses=_ERRORS)
async def list_services(engine: EngineDep, settings: SettingsDep) -> list[ServiceOut]:
    """List every service, with the rate limit that applies to it."""
    return [_service_out(row, settings) for row in await tenancy.list_services(engine)]


@router.patch(
    "/{service_id}",
    responses={**_ERRORS, 404: {"description": "No such service"}, 503: {"description": "Redis unavailable"}},
)
async def update_service(
    service_id: UUID, body: ServicePatch, engine: EngineDep, redis: RedisDep, settings: SettingsDep
) -> ServiceOut:
    """Set a service's own rate limit (`null`: the default); every API process applies it within AUTH_CACHE_SECONDS."""
    row = await ratelimits.set_rate_limit(engine, redis, service_id, body.rate_limit_per_minute)
    if row is None:
        raise NotFoundError(f"service {service_id} not found")
    return _service_out(row, settings)


@router.post(
    "/{service_id}/api-keys",
    status_code=201,
    responses={
        **_ERRORS,
        403: {"description": "Admin API disabled (no ADMIN_TOKEN), or keys cannot be issued (no SECRET_KEY)"},
        404: {"description": "No such service"},
    },
)
async def create_api_key(
    service_id: UUID, body: ApiKeyIn, engine: EngineDep, redis: RedisDep, request: Request
) -> ApiKeyCreated:
    """Create an API key, also a GOV.UK Notify key: `{key_name}-{service_id}-{secret}`, in this answer only."""
    box: SecretBox | None = request.app.state.secret_box
    if box is None:
        raise DisabledError(NO_SECRET_KEY)
    try:
        created = await tenancy.create_api_key(engine, redis, box, service_id, body.name)
    except tenancy.ServiceNotFoundError:
        raise NotFoundError(f"service {service_id} not found") from None
    return ApiKeyCreated.model_validate({**created.record._mapping, "key": created.secret})


@router.get("/{service_id}/api-keys", responses={**_ERRORS, 404: {"description": "No such service"}})
async def list_api_keys(service_id: UUID, engine: EngineDep) -> list[ApiKeyOut]:
    """List a service's API keys (prefixes only, never secrets)."""
    try:
        rows = await tenancy.list_api_keys(engine, service_id)
    except tenancy.ServiceNotFoundError:
        raise NotFoundError(f"service {service_id} not found") from None
    return [ApiKeyOut.model_validate(row, from_attributes=True) for row in rows]


@router.delete(
    "/{service_id}/api-keys/{key_id}",
    status_code=204,
    response_class=Response,
    responses={**_ERRORS, 404: {"description": "No such key"}},
)
async def revoke_api_key(service_id: UUID, key_id: UUID, engine: EngineDep, redis: RedisDep) -> Response:
    """Revoke an API key; it stops working within AUTH_CACHE_SECONDS."""
    if await tenancy.revoke_api_key(engine, redis, service_id, key_id) is None:
        raise NotFoundError(f"service {service_id} has no API key {key_id}")
    return Response(status_code=204)
