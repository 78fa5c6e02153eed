"""Who is calling: the service behind an API key, and the admin token.

The key check sits on the hot path, so verified keys (and refused ones) are remembered in-process for
AUTH_CACHE_SECONDS: a revoked key stops working within that bound. Past the in-process cache the key is looked up
in Redis (the registry of valid keys, `shared.tenancy`), which answers for every key once complete.

A token not shaped like a key is refused before any lookup; the cache holds keys' hashes (fixed size, and no
secret kept in memory), at most `max_entries` of them.
"""

import secrets
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Annotated, Generic, TypeVar
from uuid import UUID

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import State

from api.errors import AdminDisabledError, UnauthorizedError
from shared import apikeys, tenancy

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class KeyCache(Generic[K, V]):
    """Bounded in-process memory of recent key lookups: what was looked up → (outcome, expiry).

    The bearer check keeps key hash → service id or None (`KeyCache[str, UUID | None]`); the GOV.UK Notify check
    keeps service id → its keys' secrets (`api.notify_auth.NotifyKeyCache`).
    """

    def __init__(self, ttl_seconds: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[V | None, float]] = OrderedDict()

    def __len__(self) -> int:
        """How many outcomes are remembered."""
        return len(self._entries)

    def get(self, key: K) -> tuple[bool, V | None]:
        """Return (known, outcome); known is False when the key must be looked up."""
        entry = self._entries.get(key)
        if entry is None or entry[1] < time.monotonic():
            return False, None
        return True, entry[0]

    def expiry(self, key: K) -> float | None:
        """Return when (monotonic) the remembered outcome for `key` expires, or None if none is remembered."""
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: K, outcome: V | None, expires_at: float | None = None) -> None:
        """Remember the outcome of a lookup for the TTL (or until `expires_at`), evicting the oldest past the bound.

        `expires_at` ties an outcome to another one it was derived from: it must not outlive it.
        """
        if self.ttl <= 0:
            return
        until = time.monotonic() + self.ttl
        self._entries[key] = (outcome, until if expires_at is None else min(until, expires_at))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


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
    if not apikeys.looks_like_key(key):
        raise UnauthorizedError(f"malformed API key: {apikeys.KEY_SHAPES}")
    key_hash = apikeys.hash_key(key)
    cache: KeyCache[str, UUID | None] = state.key_cache
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
        AdminDisabledError: ADMIN_TOKEN is not set (403).
        UnauthorizedError: no token or a wrong one (401).
    """
    expected = request.app.state.settings.admin_token
    if expected is None:
        raise AdminDisabledError("the admin API is disabled: set ADMIN_TOKEN")
    if credentials is None or not secrets.compare_digest(
        credentials.credentials.encode(), expected.get_secret_value().encode()
    ):
        raise UnauthorizedError("missing or wrong admin token")


ServiceId = Annotated[UUID, Depends(current_service)]
AdminDep = Depends(require_admin)
