"""GOV.UK Notify's JWT check (`api.govuk.auth`) against real Postgres and Redis, through a test-only route.

Tokens are made as Notify's clients make them: with PyJWT and with the official client's own `create_jwt_token`.
"""

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID, uuid4

import httpx
import jwt
import pytest
import pytest_asyncio
from fastapi import FastAPI
from notifications_python_client.authentication import create_jwt_token
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api import cache as api_cache
from api.govuk import auth as govuk_auth
from api.govuk.auth import NotifyKeyCache, NotifyServiceId, SigningKey
from api.main import create_app
from devstack.embedded import free_port
from shared import keys, tenancy
from shared.db import create_engine
from shared.secretbox import InvalidToken, SecretBox, new_secret_key
from shared.settings import Settings
from tests.helpers import TEST_SECRET_KEY, Tenant, insert_legacy_key, make_tenant

WHOAMI = "/test-only/notify-whoami"
ADMIN = {"Authorization": "Bearer test-admin-token"}


class CacheClock:
    """The clock the in-process caches read (`api.cache.time`), moved only by the test: an entry's lifetime is
    what the test says has passed, however slowly a busy machine runs the requests in between.

    Only the caches' module sees it (asyncio keeps the real `time.monotonic`). The other clock of GOV.UK Notify's
    check, `api.govuk.auth`'s `time.time()`, bounds a token's `iat` (30 s), not a cache lifetime: it stays real.
    """

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def cache_clock(monkeypatch: pytest.MonkeyPatch) -> CacheClock:
    clock = CacheClock()
    monkeypatch.setattr(api_cache, "time", clock)
    return clock


def add_whoami(app: FastAPI) -> None:
    """A route that only authenticates, as the /v2 routes will (test-only: not in the service)."""

    @app.get(WHOAMI)
    async def whoami(service_id: NotifyServiceId) -> dict[str, str]:
        return {"service_id": str(service_id)}


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` (its lifespan already running) with the test route."""
    add_whoami(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield http


@asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app of its own on `settings`, running, with a client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app), serving(app) as http:
        yield app, http


@pytest_asyncio.fixture(loop_scope="session")
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app, with the test route."""
    async with serving(app) as client:
        yield client


def secret_of(tenant: Tenant) -> str:
    """The secret a Notify client takes from the key."""
    return tenant.key[-36:]


def _segment(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def token(secret: str, claims: dict[str, Any]) -> str:
    """An HS256 JWT as a client would make it, with any claims (PyJWT refuses to make some that clients could)."""
    signed = (
        _segment(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + _segment(json.dumps(claims).encode())
    )
    return (signed + b"." + _segment(hmac.new(secret.encode(), signed, hashlib.sha256).digest())).decode()


def bearer(value: str) -> dict[str, str]:
    """The Authorization header carrying `value`."""
    return {"Authorization": f"Bearer {value}"}


def claims_of(tenant: Tenant, **changes: Any) -> dict[str, Any]:
    """The claims a client sends (`iss`, `iat`), changed or removed (None) as given."""
    claims = {"iss": tenant.key[-73:-37], "iat": int(time.time())} | changes
    return {name: value for name, value in claims.items() if value is not None}


def refused(response: httpx.Response, status: int, message: str) -> bool:
    """True if `response` is Notify's error body with this status and message."""
    expected = {"status_code": status, "errors": [{"error": "AuthError", "message": message}]}
    assert (response.status_code, response.json()) == (status, expected)
    return True


async def test_a_token_of_the_official_client_verifies(http: httpx.AsyncClient, tenant: Tenant) -> None:
    service_id, secret = tenant.key[-73:-37], tenant.key[-36:]  # as the client splits the key

    response = await http.get(WHOAMI, headers=bearer(create_jwt_token(secret, service_id)))

    assert response.status_code == 200
    assert response.json() == {"service_id": str(tenant.service_id)}


@pytest.mark.parametrize("skew", [-25, 0, 25])
async def test_a_pyjwt_token_within_30_seconds_verifies(http: httpx.AsyncClient, tenant: Tenant, skew: int) -> None:
    signed = token(secret_of(tenant), claims_of(tenant, iat=int(time.time()) + skew))

    response = await http.get(WHOAMI, headers={"Authorization": f"bearer {signed}"})  # the scheme in any case

    assert response.json() == {"service_id": str(tenant.service_id)}


async def test_each_of_a_services_keys_verifies(
    http: httpx.AsyncClient, anonymous: httpx.AsyncClient, tenant: Tenant
) -> None:
    path = f"/services/v1/{tenant.service_id}/api-keys"
    other = (await anonymous.post(path, json={"name": "Second Key"}, headers=ADMIN)).json()["key"]

    for key in (tenant.key, other):
        response = await http.get(WHOAMI, headers=bearer(create_jwt_token(key[-36:], key[-73:-37])))
        assert response.json() == {"service_id": str(tenant.service_id)}
    assert other.startswith(f"second_key-{tenant.service_id}-")


@pytest.mark.parametrize(
    ("authorization", "status", "message"),
    [
        (None, 401, govuk_auth.NO_TOKEN),
        ("", 401, govuk_auth.NO_TOKEN),
        ("Basic dXNlcjpwYXNz", 401, govuk_auth.NOT_BEARER),
        ("Token abc.def.ghi", 401, govuk_auth.NOT_BEARER),
        ("Bearer ", 403, govuk_auth.NOT_A_TOKEN),
        ("Bearer not-a-jwt", 403, govuk_auth.NOT_A_TOKEN),
        ("Bearer aGVsbG8.d29ybGQ.c2ln", 403, govuk_auth.NOT_A_TOKEN),  # three parts, but not JSON
        ("Bearer " + "a" * 3000 + ".b.c", 403, govuk_auth.NOT_A_TOKEN),
    ],
    ids=["none", "empty", "basic", "other-scheme", "bearer-empty", "garbage", "not-json", "too-long"],
)
async def test_no_token_or_not_a_token(
    http: httpx.AsyncClient, tenant: Tenant, authorization: str | None, status: int, message: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    assert refused(await http.get(WHOAMI, headers=headers), status, message)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"iss": None}, govuk_auth.NO_ISSUER),
        ({"iss": 12345}, govuk_auth.ISSUER_NOT_A_UUID),
        ({"iss": "my-service"}, govuk_auth.ISSUER_NOT_A_UUID),
        ({"iss": ["0190b8a4-6c1e-7000-8000-000000000000"]}, govuk_auth.ISSUER_NOT_A_UUID),
        ({"iss": str(uuid4())}, govuk_auth.SERVICE_NOT_FOUND),
        ({"iat": int(time.time()) - 3600}, govuk_auth.CLOCK_SKEW),
        ({"iat": "yesterday"}, govuk_auth.CLOCK_SKEW),
        ({"iat": None}, govuk_auth.KEY_NOT_FOUND),  # as in Notify: a token without iat verifies against no key
        ({"exp": 1}, govuk_auth.NOT_A_TOKEN),
    ],
    ids=["no-iss", "iss-int", "iss-text", "iss-list", "unknown-service", "iat-old", "iat-text", "no-iat", "expired"],
)
async def test_claims_notify_refuses(
    http: httpx.AsyncClient, tenant: Tenant, changes: dict[str, Any], message: str
) -> None:
    signed = token(secret_of(tenant), claims_of(tenant, **changes))

    assert refused(await http.get(WHOAMI, headers=bearer(signed)), 403, message)


@pytest.mark.parametrize("skew", [-31 - 60, 31 + 60])
async def test_a_clock_more_than_30_seconds_off_either_way_is_refused(
    http: httpx.AsyncClient, tenant: Tenant, skew: int
) -> None:
    signed = create_jwt_token(secret_of(tenant), tenant.key[-73:-37])
    issued = token(secret_of(tenant), claims_of(tenant, iat=int(time.time()) + skew))

    assert (await http.get(WHOAMI, headers=bearer(signed))).status_code == 200
    assert refused(await http.get(WHOAMI, headers=bearer(issued)), 403, govuk_auth.CLOCK_SKEW)


@pytest.mark.parametrize("algorithm", ["HS512", "HS384", "none"])
async def test_only_hs256_is_accepted(http: httpx.AsyncClient, tenant: Tenant, algorithm: str) -> None:
    secret = None if algorithm == "none" else secret_of(tenant) * 2  # long enough for HS512
    signed = jwt.encode(claims_of(tenant), secret, algorithm=algorithm)

    assert refused(await http.get(WHOAMI, headers=bearer(signed)), 403, govuk_auth.NOT_HS256)


async def test_a_token_signed_with_no_key_of_the_service_is_refused(http: httpx.AsyncClient, tenant: Tenant) -> None:
    other_service = str(uuid4())
    made_up = token(str(uuid4()), claims_of(tenant))
    with_the_key_as_secret = token(tenant.key, claims_of(tenant))

    assert refused(await http.get(WHOAMI, headers=bearer(made_up)), 403, govuk_auth.KEY_NOT_FOUND)
    assert refused(await http.get(WHOAMI, headers=bearer(with_the_key_as_secret)), 403, govuk_auth.KEY_NOT_FOUND)
    signed_for_another = token(secret_of(tenant), claims_of(tenant, iss=other_service))
    assert refused(await http.get(WHOAMI, headers=bearer(signed_for_another)), 403, govuk_auth.SERVICE_NOT_FOUND)


async def test_a_key_of_another_service_does_not_verify_for_this_one(
    http: httpx.AsyncClient, engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    other = await make_tenant(engine, redis, "tenant-b")
    claiming_to_be_a = token(secret_of(other), claims_of(tenant))

    assert refused(await http.get(WHOAMI, headers=bearer(claiming_to_be_a)), 403, govuk_auth.KEY_NOT_FOUND)


async def test_a_revoked_key_is_refused_as_revoked_while_the_services_other_keys_work(
    http: httpx.AsyncClient, anonymous: httpx.AsyncClient, app: FastAPI, tenant: Tenant
) -> None:
    path = f"/services/v1/{tenant.service_id}/api-keys"
    kept = (await anonymous.post(path, json={"name": "kept"}, headers=ADMIN)).json()["key"]
    assert (await anonymous.delete(f"{path}/{tenant.key_id}", headers=ADMIN)).status_code == 204
    app.state.notify_keys = NotifyKeyCache(0)  # as if AUTH_CACHE_SECONDS had passed

    revoked = await http.get(WHOAMI, headers=bearer(create_jwt_token(secret_of(tenant), str(tenant.service_id))))
    working = await http.get(WHOAMI, headers=bearer(create_jwt_token(kept[-36:], str(tenant.service_id))))

    assert refused(revoked, 403, govuk_auth.KEY_REVOKED)
    assert working.status_code == 200


async def test_a_key_revoked_after_it_was_cached_is_refused_once_auth_cache_seconds_passed(
    settings: Settings, engine: AsyncEngine, redis: Redis, tenant: Tenant, cache_clock: CacheClock
) -> None:
    async with started(settings.model_copy(update={"auth_cache_seconds": 0.5})) as (_, http):
        assert (
            await http.get(WHOAMI, headers=bearer(create_jwt_token(secret_of(tenant), tenant.key[-73:-37])))
        ).status_code == 200
        await tenancy.revoke_api_key(engine, redis, tenant.service_id, tenant.key_id)

        cache_clock.advance(0.4)  # still within AUTH_CACHE_SECONDS of caching the keys
        within = await http.get(WHOAMI, headers=bearer(create_jwt_token(secret_of(tenant), tenant.key[-73:-37])))
        cache_clock.advance(0.2)  # 0.6 s since the keys were cached: past AUTH_CACHE_SECONDS
        after = await http.get(WHOAMI, headers=bearer(create_jwt_token(secret_of(tenant), tenant.key[-73:-37])))

    assert within.status_code == 200  # the cached secrets, for at most AUTH_CACHE_SECONDS
    assert refused(after, 403, govuk_auth.KEY_REVOKED)


async def test_secrets_are_sealed_with_secret_key_in_postgres_and_redis(
    engine: AsyncEngine, redis: Redis, tenant: Tenant, anonymous: httpx.AsyncClient
) -> None:
    async with engine.connect() as conn:
        stored = (
            await conn.execute(text("SELECT secret_ciphertext FROM api_keys WHERE id = :id"), {"id": tenant.key_id})
        ).scalar_one()
    registered = await redis.hgetall(keys.api_key_secrets_key(tenant.service_id))
    everything_in_redis = b"".join(
        [key + b"=" + str(await redis.type(key)).encode() for key in await redis.keys("*")]
        + [
            field + value
            for key in await redis.keys("notify:apikeys*")
            for field, value in (await redis.hgetall(key)).items()
        ]
    )

    assert secret_of(tenant) not in stored
    assert secret_of(tenant).encode() not in everything_in_redis
    assert tenant.key.encode() not in everything_in_redis
    assert SecretBox(TEST_SECRET_KEY).open(stored) == secret_of(tenant)
    assert registered == {str(tenant.key_id).encode(): f"v:{stored}".encode()}
    with pytest.raises(InvalidToken):
        SecretBox(new_secret_key()).open(stored)  # another SECRET_KEY cannot open it

    await anonymous.delete(f"/services/v1/{tenant.service_id}/api-keys/{tenant.key_id}", headers=ADMIN)
    revoked = (await redis.hget(keys.api_key_secrets_key(tenant.service_id), str(tenant.key_id))).decode()
    assert revoked.startswith("r")
    assert revoked.endswith(f":{stored}")


async def test_the_registry_answers_while_postgres_is_down(
    app: FastAPI, http: httpx.AsyncClient, tenant: Tenant
) -> None:
    signed = create_jwt_token(secret_of(tenant), str(tenant.service_id))
    assert (await http.get(WHOAMI, headers=bearer(signed))).status_code == 200  # completes the registry
    working_engine = app.state.engine
    app.state.engine = create_engine(f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    app.state.notify_keys = NotifyKeyCache(0)
    try:
        valid = await http.get(WHOAMI, headers=bearer(signed))
        unknown_services = [
            await http.get(WHOAMI, headers=bearer(create_jwt_token(secret_of(tenant), str(uuid4())))) for _ in range(10)
        ]
        unknown_key = await http.get(WHOAMI, headers=bearer(create_jwt_token(str(uuid4()), str(tenant.service_id))))
    finally:
        await app.state.engine.dispose()
        app.state.engine = working_engine

    assert valid.status_code == 200
    assert all(refused(response, 403, govuk_auth.SERVICE_NOT_FOUND) for response in unknown_services)  # not 503
    assert refused(unknown_key, 403, govuk_auth.KEY_NOT_FOUND)


async def test_a_registry_redis_lost_is_loaded_again_from_postgres(
    app: FastAPI, http: httpx.AsyncClient, redis: Redis, tenant: Tenant
) -> None:
    await redis.flushdb()
    app.state.notify_keys = NotifyKeyCache(0)

    response = await http.get(WHOAMI, headers=bearer(create_jwt_token(secret_of(tenant), str(tenant.service_id))))

    assert response.status_code == 200
    assert await redis.hexists(keys.API_KEYS_HASH, keys.API_KEYS_COMPLETE_FIELD)
    assert await redis.hexists(keys.api_key_secrets_key(tenant.service_id), str(tenant.key_id))


async def test_a_registry_an_older_version_completed_is_loaded_again(
    app: FastAPI, http: httpx.AsyncClient, redis: Redis, tenant: Tenant
) -> None:
    await redis.delete(keys.api_key_secrets_key(tenant.service_id))  # that version kept no secrets
    await redis.hset(keys.API_KEYS_HASH, "complete", "1")  # and marked its registry so

    response = await http.get(WHOAMI, headers=bearer(create_jwt_token(secret_of(tenant), str(tenant.service_id))))

    assert response.status_code == 200


async def test_tokens_not_shaped_like_a_jwt_are_refused_before_any_lookup(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    working_redis = app.state.redis
    app.state.redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")  # any lookup would be a 503
    try:
        responses = [
            await http.get(WHOAMI, headers={"Authorization": authorization})
            for authorization in ("Bearer x", "Bearer a.b", "Bearer a.b.c.d", "Bearer a b.c.d", "Bearer a=.b.c")
        ]
        no_iss = await http.get(WHOAMI, headers=bearer(jwt.encode({"iat": int(time.time())}, "x" * 32)))
    finally:
        await app.state.redis.aclose()
        app.state.redis = working_redis

    assert all(refused(response, 403, govuk_auth.NOT_A_TOKEN) for response in responses)
    assert refused(no_iss, 403, govuk_auth.NO_ISSUER)
    assert len(app.state.notify_keys) == 0


async def test_keys_issued_before_cannot_sign_and_the_message_says_so(
    http: httpx.AsyncClient, engine: AsyncEngine, redis: Redis
) -> None:
    legacy = await insert_legacy_key(engine, redis, "legacy-only")
    service_id = await tenancy.service_id_by_name(engine, "legacy-only")
    signed = create_jwt_token(legacy[-36:], str(service_id))

    response = await http.get(WHOAMI, headers=bearer(signed))

    assert refused(response, 403, govuk_auth.KEY_NOT_FOUND + govuk_auth.NO_SIGNING_KEY)


async def test_secrets_sealed_with_a_key_secret_key_no_longer_holds_cannot_sign(
    settings: Settings, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    async with started(settings.model_copy(update={"secret_key": SecretStr(new_secret_key())})) as (_, http):
        response = await http.get(WHOAMI, headers=bearer(create_jwt_token(secret_of(tenant), str(tenant.service_id))))

    assert refused(response, 403, govuk_auth.KEY_NOT_FOUND + govuk_auth.NO_SIGNING_KEY)
    assert f"the secret of API key {tenant.key_id} opens with none of SECRET_KEY's keys" in caplog.text


async def test_a_secret_key_list_opens_what_an_older_key_sealed(settings: Settings, tenant: Tenant) -> None:
    rotated = f"{new_secret_key()},{TEST_SECRET_KEY}"
    async with started(settings.model_copy(update={"secret_key": SecretStr(rotated)})) as (_, http):
        response = await http.get(WHOAMI, headers=bearer(create_jwt_token(secret_of(tenant), str(tenant.service_id))))

    assert response.status_code == 200


async def test_keys_revoked_longer_ago_than_the_grace_are_not_found(
    app: FastAPI, http: httpx.AsyncClient, engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    second = await tenancy.create_api_key(engine, redis, SecretBox(TEST_SECRET_KEY), tenant.service_id, "second")
    await tenancy.revoke_api_key(engine, redis, tenant.service_id, tenant.key_id)
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE api_keys SET revoked_at = revoked_at - interval '8 days' WHERE id = :id"),
            {"id": tenant.key_id},
        )
    await tenancy.revoke_api_key(engine, redis, tenant.service_id, second.record.id)  # drops older revocations
    app.state.notify_keys = NotifyKeyCache(0)

    old = await http.get(WHOAMI, headers=bearer(create_jwt_token(secret_of(tenant), str(tenant.service_id))))
    recent = await http.get(WHOAMI, headers=bearer(create_jwt_token(second.secret[-36:], str(tenant.service_id))))

    assert await redis.hkeys(keys.api_key_secrets_key(tenant.service_id)) == [str(second.record.id).encode()]
    assert refused(old, 403, govuk_auth.KEY_NOT_FOUND)
    assert refused(recent, 403, govuk_auth.KEY_REVOKED)


async def test_notify_service_for_is_callable_without_fastapi(app: FastAPI, tenant: Tenant) -> None:
    signed = create_jwt_token(secret_of(tenant), str(tenant.service_id))

    assert await govuk_auth.notify_service_for(app.state, f"Bearer {signed}") == tenant.service_id
    with pytest.raises(govuk_auth.NotifyAuthError) as refusal:
        await govuk_auth.notify_service_for(app.state, None)
    assert (refusal.value.status_code, refusal.value.message) == (401, govuk_auth.NO_TOKEN)


def test_the_notify_key_cache_stays_within_its_bound() -> None:
    cache = NotifyKeyCache(60, max_entries=100)
    for _ in range(1000):
        cache.put(uuid4(), (SigningKey("secret", False),))

    assert len(cache) == 100


def test_a_service_id_from_a_key_is_the_service_id(tenant: Tenant) -> None:
    assert UUID(tenant.key[-73:-37]) == tenant.service_id


async def test_a_checked_token_is_remembered_but_refused_once_its_iat_is_30_seconds_old(
    app: FastAPI, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = f"Bearer {create_jwt_token(secret_of(tenant), str(tenant.service_id))}"
    assert await govuk_auth.notify_service_for(app.state, header) == tenant.service_id

    def not_again(*args: object, **kwargs: object) -> None:
        raise AssertionError("a remembered token is not decoded again")

    with monkeypatch.context() as patched:
        patched.setattr(govuk_auth.jwt, "decode", not_again)
        assert await govuk_auth.notify_service_for(app.state, header) == tenant.service_id
    later = time.time() + 31
    monkeypatch.setattr(govuk_auth.time, "time", lambda: later)
    with pytest.raises(govuk_auth.NotifyAuthError) as refusal:
        await govuk_auth.notify_service_for(app.state, header)
    assert refusal.value.message == govuk_auth.CLOCK_SKEW


async def test_a_token_first_checked_late_is_not_remembered_past_its_keys(
    settings: Settings, engine: AsyncEngine, redis: Redis, tenant: Tenant, cache_clock: CacheClock
) -> None:
    service_id, secret = tenant.key[-73:-37], secret_of(tenant)
    async with started(settings.model_copy(update={"auth_cache_seconds": 1.0})) as (_, http):
        first = await http.get(WHOAMI, headers=bearer(create_jwt_token(secret, service_id)))  # the keys cached now
        await tenancy.revoke_api_key(engine, redis, tenant.service_id, tenant.key_id)
        cache_clock.advance(0.7)
        late = bearer(jwt.encode({"iss": service_id, "iat": int(time.time()) - 3}, secret, algorithm="HS256"))
        checked_late = await http.get(WHOAMI, headers=late)  # checked against the cached keys: passes
        cache_clock.advance(0.5)  # the keys' cache entry has expired (1.0 s), the token's would not have (1.7 s)
        again = await http.get(WHOAMI, headers=late)

    assert (first.status_code, checked_late.status_code) == (200, 200)
    assert refused(again, 403, govuk_auth.KEY_REVOKED)  # within AUTH_CACHE_SECONDS of the revocation's first sight
