"""Administration of services and their API keys, behind the ADMIN_TOKEN (`Authorization: Bearer <token>`).

Thin handlers over `shared.tenancy`, which the CLI (`python -m shared.cli`) uses too.
"""

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Response
from sqlalchemy.exc import IntegrityError

from api.auth import AdminDep
from api.deps import EngineDep, RedisDep
from api.errors import ConflictError, NotFoundError
from shared import tenancy
from shared.schemas import ApiKeyCreated, ApiKeyIn, ApiKeyOut, ServiceIn, ServiceOut

router = APIRouter(prefix="/services/v1", tags=["administration"], dependencies=[AdminDep])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong admin token"},
    403: {"description": "Admin API disabled (no ADMIN_TOKEN)"},
}


@router.post("/", status_code=201, responses={**_ERRORS, 409: {"description": "Name taken"}})
async def create_service(body: ServiceIn, engine: EngineDep) -> ServiceOut:
    """Create a service (a tenant)."""
    try:
        row = await tenancy.create_service(engine, body.name)
    except IntegrityError:
        raise ConflictError(f"a service named {body.name!r} exists already") from None
    return ServiceOut.model_validate(row, from_attributes=True)


@router.get("/", responses=_ERRORS)
async def list_services(engine: EngineDep) -> list[ServiceOut]:
    """List every service."""
    return [ServiceOut.model_validate(row, from_attributes=True) for row in await tenancy.list_services(engine)]


@router.post("/{service_id}/api-keys", status_code=201, responses={**_ERRORS, 404: {"description": "No such service"}})
async def create_api_key(service_id: UUID, body: ApiKeyIn, engine: EngineDep, redis: RedisDep) -> ApiKeyCreated:
    """Create an API key; its secret `key` is in this answer only."""
    try:
        created = await tenancy.create_api_key(engine, redis, service_id, body.name)
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
