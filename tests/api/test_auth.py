"""API keys on the notification routes, and the admin routes behind ADMIN_TOKEN; limits on what a request may hold."""

from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.ext.asyncio import AsyncEngine

from api.cache import TtlCache
from api.main import create_app
from devstack.embedded import free_port
from shared import api_key_format, keys, tenancy
from shared.db import create_engine
from shared.schemas import BRIEF_EXAMPLE, BRIEF_MULTIPLE_EXAMPLE
from shared.secretbox import SecretBox
from shared.settings import Settings
from tests.helpers import TEST_SECRET_KEY, Tenant, drain_all, insert_legacy_key, make_tenant, queued
from worker.drain import Drain

BASE = "/notifications/v1"


def random_key() -> str:
    """A key of the right shape that nobody issued."""
    return api_key_format.new_key("made up", uuid4())[0]


ADMIN = {"Authorization": "Bearer test-admin-token"}
ANY_ID = "0190b8a4-6c1e-7000-8000-000000000000"


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", f"{BASE}/"), ("POST", f"{BASE}/multiple"), ("GET", f"{BASE}/{ANY_ID}"), ("GET", "/templates/v1/")],
)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer nk_made-up-key", "Basic dXNlcjpwYXNz", "Bearer "],
    ids=["none", "made-up", "basic", "empty"],
)
async def test_notification_routes_need_a_valid_key(
    anonymous: httpx.AsyncClient, redis: Redis, settings: Settings, method: str, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    body = [{"to": "me"}] if path.endswith("multiple") else {"to": "me"}

    response = await anonymous.request(method, path, json=body if method == "POST" else None, headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "key" in response.json()["detail"]
    assert await queued(redis, settings) == 0


async def test_revoked_key_is_refused(anonymous: httpx.AsyncClient, app: FastAPI, tenant: Tenant) -> None:
    assert (await anonymous.post(f"{BASE}/", json={"to": "me"}, headers=tenant.headers)).status_code == 201

    revoked = await anonymous.delete(f"/services/v1/{tenant.service_id}/api-keys/{tenant.key_id}", headers=ADMIN)
    assert revoked.status_code == 204
    app.state.key_cache = type(app.state.key_cache)(0)  # as if AUTH_CACHE_SECONDS had passed

    response = await anonymous.post(f"{BASE}/", json={"to": "me"}, headers=tenant.headers)
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid or revoked API key"


async def test_revoked_key_stays_refused_when_redis_lost_the_registry(
    anonymous: httpx.AsyncClient, app: FastAPI, redis: Redis, tenant: Tenant
) -> None:
    await anonymous.delete(f"/services/v1/{tenant.service_id}/api-keys/{tenant.key_id}", headers=ADMIN)
    await redis.delete(keys.API_KEYS_HASH)
    app.state.key_cache = type(app.state.key_cache)(0)

    response = await anonymous.post(f"{BASE}/", json={"to": "me"}, headers=tenant.headers)

    assert response.status_code == 401


async def test_valid_key_works_when_redis_lost_the_registry(
    anonymous: httpx.AsyncClient, app: FastAPI, redis: Redis, tenant: Tenant
) -> None:
    await redis.delete(keys.API_KEYS_HASH)
    app.state.key_cache = type(app.state.key_cache)(0)

    response = await anonymous.post(f"{BASE}/", json={"to": "me"}, headers=tenant.headers)

    assert response.status_code == 201
    registry = await redis.hgetall(keys.API_KEYS_HASH)  # loaded again from Postgres, and marked complete
    assert registry == {
        api_key_format.hash_key(tenant.key).encode(): str(tenant.service_id).encode(),
        keys.API_KEYS_COMPLETE_FIELD.encode(): b"1",
    }


async def test_unknown_keys_are_refused_without_postgres_once_the_registry_is_complete(
    anonymous: httpx.AsyncClient, app: FastAPI, redis: Redis, tenant: Tenant
) -> None:
    assert await tenancy.service_for_key(app.state.engine, redis, random_key()) is None  # completes the registry
    working_engine = app.state.engine
    app.state.engine = create_engine(f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    try:
        unknown = [{"Authorization": f"Bearer {random_key()}"} for _ in range(20)]
        responses = [await anonymous.post(f"{BASE}/", json={"to": "me"}, headers=headers) for headers in unknown]
        valid = await anonymous.post(f"{BASE}/", json={"to": "me"}, headers=tenant.headers)
    finally:
        await app.state.engine.dispose()
        app.state.engine = working_engine

    assert {response.status_code for response in responses} == {401}  # not 503: Postgres was never asked
    assert valid.status_code == 201


async def test_tokens_not_shaped_like_a_key_are_refused_before_any_lookup_or_caching(
    anonymous: httpx.AsyncClient, app: FastAPI
) -> None:
    service, secret = "0190b8a4-6c1e-7000-8000-000000000000", "3d5c1c7e-8b9a-4f0e-9d2c-1a2b3c4d5e6f"
    malformed = [
        *["nk_short", "nk_" + "a" * 44, "nk_" + "a" * 42 + "!", "x" * 8000, "nk_" + "a" * 43 + " trailing"],
        f"-{service}-{secret}",  # no name
        f"Prod-{service}-{secret}",  # not made safe
        f"my-key-{service}-{secret}",
        f"{'a' * 65}-{service}-{secret}",  # a longer name than a key holds
        f"prod-{service.upper()}-{secret}",
        f"prod-{service}-{secret[:-1]}",
        f"prod-{service}-{secret.replace('-4f0e-', '-1f0e-')}",  # the secret is a UUID4
        f"prod-{service}",
        f"prod-{service}-{secret} x",
    ]
    working_redis = app.state.redis
    app.state.redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")  # any lookup would be a 503
    try:
        responses = [
            await anonymous.post(f"{BASE}/", json={"to": "me"}, headers={"Authorization": f"Bearer {token}"})
            for token in malformed
        ]
    finally:
        await app.state.redis.aclose()
        app.state.redis = working_redis

    assert [response.status_code for response in responses] == [401] * len(malformed)
    assert {response.json()["detail"] for response in responses} == {
        "malformed API key: keys are `{key_name}-{service_id}-{secret}` (lowercase a-z, 0-9 and `_`, then two UUIDs), "
        "or, issued before, `nk_` and 43 URL-safe characters"
    }
    assert len(app.state.key_cache) == 0


def test_the_key_cache_stays_within_its_bound() -> None:
    cache = TtlCache(60, max_entries=100)
    for _ in range(1000):
        cache.put(api_key_format.hash_key(random_key()), None)

    assert len(cache) == 100


@pytest.mark.parametrize("path", [f"{BASE}/", f"{BASE}/{ANY_ID}", "/services/v1/", "/status/heartbeat"])
async def test_oversized_headers_are_refused_with_431_on_every_route(anonymous: httpx.AsyncClient, path: str) -> None:
    response = await anonymous.get(path, headers={"Authorization": "Bearer " + "k" * 20_000})

    assert response.status_code == 431
    assert "MAX_HEADER_BYTES" in response.json()["detail"]


async def test_a_key_cannot_be_made_while_redis_is_unreachable(engine: AsyncEngine, redis: Redis) -> None:
    service = await tenancy.create_service(engine, "made during a redis outage")
    unreachable = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        with pytest.raises(RedisConnectionError):
            await tenancy.create_api_key(engine, unreachable, SecretBox(TEST_SECRET_KEY), service.id, "outage")
    finally:
        await unreachable.aclose()

    assert await tenancy.list_api_keys(engine, service.id) == []  # nothing made: no key the registry would refuse


async def test_other_services_notifications_are_404_before_and_after_the_drain(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, engine: AsyncEngine, redis: Redis, drain: Drain
) -> None:
    other = await make_tenant(engine, redis, "tenant-b")
    mine = (await client.post(f"{BASE}/", json={"to": "me"})).json()

    assert (await anonymous.get(f"{BASE}/{mine['id']}", headers=other.headers)).status_code == 404
    await drain_all(drain)
    await redis.flushdb()
    assert (await anonymous.get(f"{BASE}/{mine['id']}", headers=other.headers)).status_code == 404
    assert (await client.get(f"{BASE}/{mine['id']}")).json() == mine


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/services/v1/"),
        ("POST", "/services/v1/"),
        ("POST", f"/services/v1/{ANY_ID}/api-keys"),
        ("GET", f"/services/v1/{ANY_ID}/api-keys"),
        ("DELETE", f"/services/v1/{ANY_ID}/api-keys/{ANY_ID}"),
    ],
)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token"])
async def test_admin_routes_need_the_admin_token(
    anonymous: httpx.AsyncClient, tenant: Tenant, method: str, path: str, authorization: str | None
) -> None:
    for headers in ({"Authorization": authorization} if authorization else {}, tenant.headers):
        response = await anonymous.request(
            method, path, json={"name": "x"} if method == "POST" else None, headers=headers
        )
        assert response.status_code == 401, headers


async def test_admin_api_is_off_without_admin_token(settings: object, redis: Redis, engine: AsyncEngine) -> None:
    from api.main import create_app

    app = create_app(settings.model_copy(update={"admin_token": None}))  # type: ignore[attr-defined]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.get("/services/v1/", headers={"Authorization": "Bearer anything"})

    assert response.status_code == 403
    assert "ADMIN_TOKEN" in response.json()["detail"]


async def test_an_empty_admin_token_turns_the_admin_api_off(
    settings: Settings, redis: Redis, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.main import create_app

    # `ADMIN_TOKEN: ${ADMIN_TOKEN:-}` in docker-compose.yml gives an empty value when the operator sets none
    monkeypatch.setenv("ADMIN_TOKEN", "")
    from_env = Settings(_env_file=None)  # type: ignore[call-arg]
    assert from_env.admin_token is None
    app = create_app(settings.model_copy(update={"admin_token": from_env.admin_token}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            bare = await http.get("/services/v1/")
            empty = await http.get("/services/v1/", headers={"Authorization": "Bearer "})

    for response in (bare, empty):
        assert response.status_code == 403
        assert "ADMIN_TOKEN" in response.json()["detail"]


async def test_admin_creates_service_and_key_that_works(anonymous: httpx.AsyncClient) -> None:
    service = await anonymous.post("/services/v1/", json={"name": "newsletter"}, headers=ADMIN)
    assert service.status_code == 201
    service_id = service.json()["id"]
    assert service.json()["name"] == "newsletter"
    assert (await anonymous.post("/services/v1/", json={"name": "newsletter"}, headers=ADMIN)).status_code == 409

    created = await anonymous.post(f"/services/v1/{service_id}/api-keys", json={"name": "prod"}, headers=ADMIN)
    assert created.status_code == 201
    key = created.json()["key"]
    assert key == f"prod-{service_id}-{key[-36:]}"  # GOV.UK Notify's shape: the client reads both ids from the end
    assert (key[-73:-37], str(UUID(key[-36:]))) == (service_id, key[-36:])
    assert UUID(key[-36:]).version == 4
    assert created.json()["prefix"] == key[:-32]  # up to the first 4 characters of the secret
    assert created.json()["revoked_at"] is None

    listed = await anonymous.get(f"/services/v1/{service_id}/api-keys", headers=ADMIN)
    assert [item["id"] for item in listed.json()] == [created.json()["id"]]
    assert "key" not in listed.json()[0]
    assert key not in listed.text

    posted = await anonymous.post(f"{BASE}/", json={"to": "me"}, headers={"Authorization": f"Bearer {key}"})
    assert posted.status_code == 201
    assert posted.json()["service_id"] == service_id

    names = [item["name"] for item in (await anonymous.get("/services/v1/", headers=ADMIN)).json()]
    assert "newsletter" in names


async def test_without_secret_key_no_key_is_issued_and_the_admin_is_told_why(
    settings: Settings, engine: AsyncEngine, redis: Redis
) -> None:
    service = await tenancy.create_service(engine, "no secret key")
    app = create_app(settings.model_copy(update={"secret_key": None}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=ADMIN) as http:
            response = await http.post(f"/services/v1/{service.id}/api-keys", json={"name": "prod"})

    assert response.status_code == 403
    assert response.json()["detail"].startswith("SECRET_KEY is not set: API keys cannot be issued")
    assert await tenancy.list_api_keys(engine, service.id) == []


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("prod", "prod"),
        ("My Production Key!", "my_production_key"),
        ("  --Zoë's key--  ", "zo_s_key"),
        ("snake_case_99", "snake_case_99"),
        ("!!!", "key"),
        ("é", "key"),
        ("x" * 63 + " y", "x" * 63),
        ("a" * 200, "a" * 64),
    ],
)
def test_a_key_holds_its_name_made_safe(name: str, shown: str) -> None:
    service_id = UUID(ANY_ID)

    key, secret = api_key_format.new_key(name, service_id)

    assert key == f"{shown}-{service_id}-{secret}"
    assert api_key_format.looks_like_key(key)


async def test_keys_issued_before_still_work_on_the_native_routes(
    anonymous: httpx.AsyncClient, engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    legacy = await insert_legacy_key(engine, redis, "tenant-a")

    created = await anonymous.post(f"{BASE}/", json={"to": "me"}, headers={"Authorization": f"Bearer {legacy}"})
    found = await anonymous.get(f"{BASE}/{created.json()['id']}", headers=tenant.headers)  # the same service

    assert created.status_code == 201
    assert created.json()["service_id"] == str(tenant.service_id)
    assert found.status_code == 200


async def test_admin_404s(anonymous: httpx.AsyncClient, tenant: Tenant) -> None:
    missing_service = await anonymous.post(f"/services/v1/{ANY_ID}/api-keys", json={"name": "x"}, headers=ADMIN)
    missing_key = await anonymous.delete(f"/services/v1/{tenant.service_id}/api-keys/{ANY_ID}", headers=ADMIN)

    assert missing_service.status_code == 404
    assert missing_key.status_code == 404


@pytest.mark.parametrize("path", ["/templates/v1/", "/services/v1/", f"{BASE}/", f"{BASE}/multiple"])
async def test_a_chunked_body_is_cut_off_at_the_limit_on_every_route(client: httpx.AsyncClient, path: str) -> None:
    chunk, sent = b" " * 65_536, 0

    async def endless() -> AsyncIterator[bytes]:  # 300 MB if read whole; no Content-Length: chunked
        nonlocal sent
        yield b"["
        for _ in range(300 * 16):
            sent += len(chunk)
            yield chunk

    response = await client.post(path, content=endless(), headers={"content-type": "application/json"})

    assert response.status_code == 413
    assert "larger than 4194304 bytes" in response.json()["detail"]
    assert sent <= 4 * 1024 * 1024 + 2 * len(chunk)  # reading stopped at the limit


@pytest.mark.parametrize("path", ["/templates/v1/", "/services/v1/", f"{BASE}/"])
async def test_oversized_bodies_are_refused_before_anything_else(anonymous: httpx.AsyncClient, path: str) -> None:
    body = b"{" + b" " * (4 * 1024 * 1024 + 10) + b"}"

    response = await anonymous.post(path, content=body, headers={"content-type": "application/json"})

    assert response.status_code == 413  # not a 401, and nothing was parsed
    assert "larger than" in response.json()["detail"]


async def test_without_a_key_requests_act_as_the_anonymous_service_when_one_is_named(
    settings: Settings, engine: AsyncEngine, tenant: Tenant
) -> None:
    development = await tenancy.create_service(engine, "development")
    app = create_app(settings.model_copy(update={"anonymous_service": "development"}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost:8000") as http:
            single = await http.post(f"{BASE}/", json=BRIEF_EXAMPLE)  # the brief's examples, verbatim: no key
            multiple = await http.post(f"{BASE}/multiple", json=BRIEF_MULTIPLE_EXAMPLE)
            found = await http.get(f"{BASE}/{single.json()['id']}")
            wrong_key = await http.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers={"Authorization": "Bearer nk_wrong"})
            unknown_key = await http.post(
                f"{BASE}/", json=BRIEF_EXAMPLE, headers={"Authorization": f"Bearer {random_key()}"}
            )
            others = await http.get(f"{BASE}/{single.json()['id']}", headers=tenant.headers)
            ready = await http.get("/status/ready")

    assert (single.status_code, multiple.status_code, found.status_code) == (201, 201, 200)
    assert {n["service_id"] for n in [single.json(), *multiple.json()]} == {str(development.id)}
    assert (wrong_key.status_code, unknown_key.status_code) == (401, 401)  # a key that is sent must be valid
    assert others.status_code == 404  # another service does not see them
    assert ready.json()["anonymous_service"] == "development"


async def test_an_anonymous_service_that_does_not_exist_is_a_401_naming_the_setting(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"anonymous_service": "nobody-made-this"}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost:8000") as http:
            response = await http.post(f"{BASE}/", json=BRIEF_EXAMPLE)
            ready = await http.get("/status/ready")

    assert response.status_code == 401
    assert "ANONYMOUS_SERVICE" in response.json()["detail"]
    assert ready.json()["anonymous_service"] == "nobody-made-this"


async def test_without_anonymous_service_a_request_without_a_key_is_a_401(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.post(f"{BASE}/", json=BRIEF_EXAMPLE)
    ready = await anonymous.get("/status/ready")

    assert response.status_code == 401
    assert ready.json()["anonymous_service"] is None
