"""Who is calling, for the GOV.UK Notify routes: the service whose key signed the request's Notify JWT.

A Notify client holds a key `{key_name}-{service_id}-{secret}` (`shared.api_key_format`) and sends
`Authorization: Bearer <jwt>`, a JWT signed HS256 with the secret, with the claims `iss` (the service id) and `iat`
(epoch seconds). Each refusal is Notify's own status and message (`NotifyAuthError`), checked in Notify's order
(`notify_service_for`). The check stays off Postgres: a token not shaped like a JWT is refused before any lookup; a
service's secrets, opened with SECRET_KEY, are remembered in-process for AUTH_CACHE_SECONDS (a revocation takes
effect within it), and otherwise come sealed from the Redis registry (`shared.tenancy`), loaded from Postgres only
when Redis lost it.
"""

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Annotated
from uuid import UUID

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import State

from api.cache import TtlCache
from api.errors import NotifyAuthError
from shared import failures, tenancy
from shared.secretbox import InvalidToken, SecretBox

__all__ = [
    "NotifyKeyCache",
    "NotifyServiceId",
    "NotifyTokenCache",
    "SigningKey",
    "current_notify_service",
    "notify_service_for",
]

logger = logging.getLogger(__name__)

ALGORITHM = "HS256"
#: How far `iat` may be from the server's clock, either way (Notify's `__bound__`).
CLOCK_BOUND_SECONDS = 30
#: Longer tokens are refused unread (a client's token is some 150 characters).
MAX_TOKEN_LENGTH = 2048
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

# Notify's messages, word for word (not passwords).
NO_TOKEN = "Unauthorized: authentication token must be provided"  # noqa: S105
NOT_BEARER = "Unauthorized: authentication bearer scheme must be used"
AUTHORISATION_DOCS = "https://docs.notifications.service.gov.uk/rest-api.html#authorisation-header"
NOT_A_TOKEN = f"Invalid token: make sure your API token matches the example at {AUTHORISATION_DOCS}"
NO_ISSUER = "Invalid token: iss field not provided"
ISSUER_NOT_A_UUID = "Invalid token: service id is not the right data type"
SERVICE_NOT_FOUND = "Invalid token: service not found"
CLOCK_SKEW = "Error: Your system clock must be accurate to within 30 seconds"
NOT_HS256 = "Invalid token: algorithm used is not HS256"
KEY_REVOKED = "Invalid token: API key revoked"
KEY_NOT_FOUND = "Invalid token: API key not found"
#: Added when none of the service's keys can sign: keys issued before secrets were kept (or sealed with a key that
#: SECRET_KEY no longer holds, which the log says).
NO_SIGNING_KEY = " (none of this service's API keys can sign tokens: issue a new key)"


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One of a service's keys as the check uses it: its secret (None: it cannot sign) and whether it is revoked."""

    secret: str | None
    revoked: bool


class NotifyKeyCache(TtlCache[UUID, tuple[SigningKey, ...]]):
    """Per process: service id → its keys' secrets, valid ones first (None: no such service), for the TTL."""


class NotifyTokenCache(TtlCache[bytes, tuple[UUID, int]]):
    """Per process: a token that passed the whole check (by its SHA-256) → (service id, `iat`), for the TTL.

    A client signs one token per second at most (`iat` is in whole seconds, its only changing claim), so at any rate
    worth caching a token arrives many times: checked once, it costs a hash and a lookup after that instead of two
    JWT decodes and an HMAC (~55 us, more than the rest of a v2 send's write path). A remembered token is still
    refused once its `iat` is more than 30 s old; a revoked key's tokens pass for up to AUTH_CACHE_SECONDS, as the
    key itself does on the native routes.
    """


notify_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="NotifyJWT",
    description="GOV.UK Notify's JWT (HS256, claims `iss`: service id, `iat`), signed with the key's secret",
)


def _token(authorization: str | None) -> str:
    if not authorization:
        raise NotifyAuthError(NO_TOKEN, 401)
    if authorization[:7].title() != "Bearer ":
        raise NotifyAuthError(NOT_BEARER, 401)
    return authorization[7:]


def _issuer(token: str) -> UUID:
    """Return the service id a token claims to come from (not yet checked)."""
    if len(token) > MAX_TOKEN_LENGTH or _JWT_SHAPE.fullmatch(token) is None:
        raise NotifyAuthError(NOT_A_TOKEN)
    try:
        claims = jwt.decode(token, options={"verify_signature": False}, algorithms=[ALGORITHM])
    except jwt.InvalidTokenError:
        raise NotifyAuthError(NOT_A_TOKEN) from None
    if "iss" not in claims:
        raise NotifyAuthError(NO_ISSUER)
    try:
        return UUID(claims["iss"])
    except (TypeError, ValueError, AttributeError):
        raise NotifyAuthError(ISSUER_NOT_A_UUID) from None


def _open(box: SecretBox | None, sealed: tenancy.SealedSecret) -> SigningKey:
    if sealed.ciphertext is None or box is None:
        return SigningKey(None, sealed.revoked)
    try:
        return SigningKey(box.open(sealed.ciphertext), sealed.revoked)
    except InvalidToken:
        logger.error("the secret of API key %s opens with none of SECRET_KEY's keys", sealed.key_id)
        return SigningKey(None, sealed.revoked)


async def _signing_keys(state: State, service_id: UUID) -> tuple[SigningKey, ...] | None:
    cache: NotifyKeyCache = state.notify_keys
    known, found = cache.get(service_id)
    if not known:
        sealed = await tenancy.sealed_secrets(state.engine, state.redis, service_id)
        if sealed is not None:
            box: SecretBox | None = state.secret_box
            if box is None:
                logger.warning("a GOV.UK Notify token cannot be checked: SECRET_KEY is not set")
            found = tuple(_open(box, secret) for secret in sealed)
        cache.put(service_id, found)
    return found


def _verify(token: str, signing_keys: tuple[SigningKey, ...]) -> int:
    """Return the `iat` of `token` if a valid key signed it (with the claims Notify requires); else raise."""
    for key in signing_keys:
        if key.secret is None:
            continue
        try:
            claims = jwt.decode(token, key.secret, algorithms=[ALGORITHM], leeway=CLOCK_BOUND_SECONDS)
        except (jwt.InvalidIssuedAtError, jwt.ImmatureSignatureError):
            raise NotifyAuthError(CLOCK_SKEW) from None
        except jwt.InvalidAlgorithmError:
            raise NotifyAuthError(NOT_HS256) from None
        except jwt.DecodeError:  # the signature of another key (or none): try the next one
            continue
        except jwt.InvalidTokenError:
            raise NotifyAuthError(NOT_A_TOKEN) from None
        if "iat" not in claims:
            continue
        now, issued_at = int(time.time()), int(claims["iat"])
        if now > issued_at + CLOCK_BOUND_SECONDS or issued_at > now + CLOCK_BOUND_SECONDS:
            raise NotifyAuthError(CLOCK_SKEW)
        if key.revoked:
            raise NotifyAuthError(KEY_REVOKED)
        return issued_at
    can_sign = any(key.secret is not None for key in signing_keys)
    raise NotifyAuthError(KEY_NOT_FOUND if can_sign else KEY_NOT_FOUND + NO_SIGNING_KEY)


def _verify_during_outage(
    token: str, sealed: list[tenancy.SealedSecret] | None, box: SecretBox | None, outage: Exception
) -> None:
    """Check a token against the keys Redis holds while its registry is incomplete and Postgres unreachable.

    A key there that signed it decides (remembered nowhere); a token none of them signed may be signed by a key
    only Postgres knows: the outage is raised (a 503), never a refusal.
    """
    try:
        _verify(token, tuple(_open(box, secret) for secret in sealed or ()))
    except NotifyAuthError as refused:
        if refused.message.startswith(KEY_NOT_FOUND):
            raise outage from None
        raise


async def notify_service_for(state: State, authorization: str | None) -> UUID:
    """Return the id of the service whose key signed the GOV.UK Notify JWT of an `Authorization` header value.

    For the hot path as for FastAPI's routes (`NotifyServiceId` is the dependency form); callers catch nothing:
    `api.handlers` answers NotifyAuthError in Notify's shape.

    As in Notify (notifications-api's `requires_auth` with the client package's `decode_jwt_token`):

    1. no `Authorization` header → 401; not the `Bearer` scheme → 401;
    2. `iss` read without checking the signature: not a JWT → 403, no `iss` → 403, not a UUID → 403;
    3. the service's keys, valid ones first, then those revoked in the last 7 days (`keys.REVOKED_KEY_GRACE_SECONDS`):
       none → 403 `service not found` (a service without keys is not told apart from an unknown one);
    4. each key in turn: a token of another algorithm than HS256 → 403; signed with another key → the next key;
       signed with this one but `iat` more than 30 s from now → 403 (clock); without `iat` → the next key (Notify's
       quirk, so it ends as `API key not found`); otherwise not valid (an `exp` passed, say) → 403; valid but the
       key revoked → 403;
    5. no key signed it → 403 `API key not found`.

    Raises:
        NotifyAuthError: no token or not the Bearer scheme (401); a token Notify would refuse (403, its message).
    """
    token = _token(authorization)
    tokens: NotifyTokenCache = state.notify_tokens
    token_hash = hashlib.sha256(token.encode()).digest()
    _, checked = tokens.get(token_hash)
    if checked is not None and time.time() <= checked[1] + CLOCK_BOUND_SECONDS:  # only successes are remembered
        return checked[0]
    service_id = _issuer(token)
    try:
        signing_keys = await _signing_keys(state, service_id)
    except Exception as exc:
        if not failures.database_unreachable(exc):
            raise
        _verify_during_outage(token, await tenancy.registered_secrets(state.redis, service_id), state.secret_box, exc)
        return service_id
    if signing_keys is None:
        raise NotifyAuthError(SERVICE_NOT_FOUND)
    # remembered no longer than the keys it was checked against: a revocation still takes AUTH_CACHE_SECONDS at most
    key_cache: NotifyKeyCache = state.notify_keys
    keys_expire = key_cache.expiry(service_id)
    tokens.put(token_hash, (service_id, _verify(token, signing_keys)), expires_at=keys_expire)
    return service_id


async def current_notify_service(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(notify_scheme)]
) -> UUID:
    """Dependency form of `notify_service_for` (which also documents the scheme in OpenAPI)."""
    return await notify_service_for(request.app.state, request.headers.get("authorization"))


NotifyServiceId = Annotated[UUID, Depends(current_notify_service)]
