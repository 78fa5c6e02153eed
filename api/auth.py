"""Who is calling: the service behind an API key, and the admin token.

A key's outcome (its service, or refused) is remembered in-process by the key's hash for AUTH_CACHE_SECONDS, so a
revoked key stops working within that bound; past that the Redis registry (`shared.tenancy`) answers. A token not
shaped like a key is refused before any lookup.
"""

import secrets
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import State

from api.cache import TtlCache
from api.errors import DisabledError, UnauthorizedError
from shared import api_key_format, tenancy

api_key_scheme = HTTPBearer(
    auto_error=False, scheme_name="ApiKey", description="A service's API key: `Authorization: Bearer <key>`"
)
admin_scheme = HTTPBearer(auto_error=False, scheme_name="AdminToken", description="The ADMIN_TOKEN setting")

Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(api_key_scheme)]
AdminCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(admin_scheme)]


def bearer_token(authorization: str | None) -> str | None:
    """Return the token of an `Authorization: Bearer <token>` header value, or None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def service_for(state: State, authorization: str | None) -> UUID:
    """Return the id of the service whose API key the `Authorization` header value carries.

    Called directly by the hot path (a FastAPI dependency costs more than the check itself); `current_service`
    is the same check as a dependency, which also documents the scheme in OpenAPI.

    Raises:
        UnauthorizedError: no key, a malformed, unknown or revoked key (401).
    """
    if authorization is None and state.settings.anonymous_service is not None:
        return await anonymous_service(state)
    key = bearer_token(authorization)
    if key is None:
        raise UnauthorizedError("missing API key: send `Authorization: Bearer <api key>`")
    if not api_key_format.looks_like_key(key):
        raise UnauthorizedError(f"malformed API key: {api_key_format.KEY_SHAPES}")
    key_hash = api_key_format.hash_key(key)
    cache: TtlCache[str, UUID | None] = state.key_cache
    known, service_id = cache.get(key_hash)
    if not known:
        service_id = await tenancy.service_for_hash(state.engine, state.redis, key_hash)
        cache.put(key_hash, service_id)
    if service_id is None:
        raise UnauthorizedError("invalid or revoked API key")
    return service_id


async def anonymous_service(state: State) -> UUID:
    """Return the id of the ANONYMOUS_SERVICE (looked up once per process: a service's id never changes).

    Raises:
        UnauthorizedError: no service has that name (401, naming the setting).
    """
    service_id: UUID | None = getattr(state, "anonymous_service_id", None)
    if service_id is None:
        name = state.settings.anonymous_service
        service_id = await tenancy.service_id_by_name(state.engine, name)
        if service_id is None:
            raise UnauthorizedError(f"missing API key, and ANONYMOUS_SERVICE names no service {name!r}")
        state.anonymous_service_id = service_id
    return service_id


async def current_service(request: Request, credentials: Credentials) -> UUID:
    """Dependency form of `service_for`."""
    return await service_for(request.app.state, request.headers.get("authorization"))


async def require_admin(request: Request, credentials: AdminCredentials) -> None:
    """Let the request through only with the ADMIN_TOKEN.

    Raises:
        DisabledError: ADMIN_TOKEN is not set (403).
        UnauthorizedError: no token or a wrong one (401).
    """
    expected = request.app.state.settings.admin_token
    if expected is None:
        raise DisabledError("the admin API is disabled: set ADMIN_TOKEN")
    if credentials is None or not secrets.compare_digest(
        credentials.credentials.encode(), expected.get_secret_value().encode()
    ):
        raise UnauthorizedError("missing or wrong admin token")


ServiceId = Annotated[UUID, Depends(current_service)]
AdminDep = Depends(require_admin)
