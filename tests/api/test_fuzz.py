"""Schema-driven fuzzing: schemathesis generates valid and invalid requests for every operation of the OpenAPI
spec and sends them to a real uvicorn server; no answer may be a 5xx (503 from an outage aside, which cannot
happen here). A property-based test adds arbitrary JSON documents and raw bytes on the write routes.
"""

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from api.main import create_app
from devstack.embedded import free_port
from shared import tenancy
from shared.db import create_engine
from shared.secretbox import SecretBox
from tests.helpers import ROOT, Tenant, notify_headers, notify_key

# a native job's body (CSV or NDJSON): arbitrary bytes, and lines that look the part
_LINES = st.lists(st.sampled_from([b"to,name", b"a@example.com,A", b'{"to": "a@example.com"}', b"", b",,"]), max_size=5)
for _media_type in ("text/csv", "application/x-ndjson"):
    schemathesis.openapi.media_type(_media_type, st.one_of(st.binary(max_size=200), _LINES.map(b"\n".join)))
schema = schemathesis.openapi.from_dict(create_app().openapi())
ADMIN_TOKEN = "fuzz-admin-token"
#: Examples per operation; raise it (FUZZ_EXAMPLES=1000) for a longer hunt than `make test` affords.
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def server(worker_env: dict[str, str], venv_bin: Path) -> Iterator[tuple[str, Tenant]]:
    """A uvicorn server on the test servers, and a fresh service with an API key."""

    async def tenant() -> Tenant:
        engine = create_engine(worker_env["DATABASE_URL"])
        redis = Redis.from_url(worker_env["REDIS_URL"])
        service = await tenancy.create_service(engine, f"fuzz-{os.getpid()}-{time.monotonic_ns()}")
        created = await tenancy.create_api_key(engine, redis, SecretBox(worker_env["SECRET_KEY"]), service.id, "fuzz")
        await redis.aclose()
        await engine.dispose()
        return Tenant(service.id, created.secret, created.record.id)

    key = asyncio.run(tenant())
    port = free_port()
    env = {**worker_env, "ADMIN_TOKEN": ADMIN_TOKEN, "ACCESS_LOG": "false", "LOG_LEVEL": "WARNING"}
    process = subprocess.Popen(
        [str(venv_bin / "uvicorn"), "api.main:app", "--port", str(port), "--no-access-log"], env=env, cwd=ROOT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/status/heartbeat").status_code == 204:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url, key
    finally:
        process.terminate()
        process.wait(timeout=30)


def _auth(path: str, tenant: Tenant) -> dict[str, str]:
    if path.startswith("/v2/"):
        return {"Authorization": notify_headers(notify_key(tenant))["Authorization"]}
    token = ADMIN_TOKEN if path.startswith("/services") else tenant.key
    return {"Authorization": f"Bearer {token}"}


@schema.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case, server: tuple[str, Tenant]) -> None:
    url, key = server
    response = case.call(base_url=url, headers=_auth(case.path, key), timeout=10)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])
    content_type = response.headers.get("content-type", [""])[0]
    if response.status_code == 400 and content_type.startswith("text/plain"):
        return  # uvicorn refused a malformed HTTP message (say, an empty Content-Length) before the app saw it
    if response.status_code >= 400:
        assert content_type.startswith("application/json"), (case.path, response.status_code, response.text[:200])
        # Notify's shape on the GOV.UK Notify v2 routes, {"detail": ...} elsewhere
        shape = "errors" if case.path.startswith("/v2/") else "detail"
        assert shape in response.json(), (case.method, case.path, response.status_code, response.text[:300])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=json_values | st.binary(max_size=200),
    path=st.sampled_from(["/notifications/v1/", "/notifications/v1/multiple"]),
)
def test_arbitrary_bodies_get_4xx_or_201(server: tuple[str, Tenant], body: object, path: str) -> None:
    url, key = server
    headers = {**_auth(path, key), "Content-Type": "application/json"}
    if isinstance(body, bytes):
        response = httpx.post(url + path, content=body, headers=headers)
    else:
        response = httpx.post(url + path, json=body, headers=headers)
    assert response.status_code in (201, 413, 422), (body, response.status_code, response.text[:300])


@pytest.mark.parametrize("depth", [100, 10_000, 100_000])
def test_deeply_nested_json_is_422(server: tuple[str, Tenant], depth: int) -> None:
    url, key = server
    body = b"[" * depth + b"]" * depth
    response = httpx.post(url + "/notifications/v1/multiple", content=body, headers=_auth("/", key))
    assert response.status_code == 422


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=json_values | st.binary(max_size=200),
    path=st.sampled_from(["/v2/notifications/email", "/v2/notifications/sms"]),
)
def test_arbitrary_bodies_on_v2_get_notifys_400(server: tuple[str, Tenant], body: object, path: str) -> None:
    url, tenant = server
    headers = {**_auth(path, tenant), "Content-Type": "application/json"}
    if isinstance(body, bytes):
        response = httpx.post(url + path, content=body, headers=headers)
    else:
        response = httpx.post(url + path, json=body, headers=headers)
    assert response.status_code == 400, (body, response.status_code, response.text[:300])
    assert response.json()["errors"][0]["error"] in ("ValidationError", "BadRequestError")


def test_deeply_nested_json_on_v2_is_invalid_json(server: tuple[str, Tenant]) -> None:
    url, tenant = server
    body = b"[" * 100_000 + b"]" * 100_000
    response = httpx.post(url + "/v2/notifications/email", content=body, headers=_auth("/v2/", tenant))
    assert response.json()["errors"] == [{"error": "BadRequestError", "message": "Invalid JSON supplied in POST data"}]
