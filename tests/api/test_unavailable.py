"""Redis unreachable: POST and GET answer 503 JSON with Retry-After, quickly, never a 500."""

import time

import httpx
import pytest

from api.main import create_app
from devstack.embedded import free_port
from shared.settings import Settings
from tests.helpers import Tenant


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/notifications/v1/", {"to": "me"}),
        ("POST", "/notifications/v1/multiple", [{"to": "me"}]),
        ("GET", "/notifications/v1/0190b8a4-6c1e-7000-8000-000000000000", None),
    ],
)
async def test_redis_down_is_503(settings: Settings, tenant: Tenant, method: str, path: str, body: object) -> None:
    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "redis_timeout_seconds": 1.0})
    app = create_app(dead)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=tenant.headers) as client:
            started = time.monotonic()
            response = await client.request(method, path, json=body)

    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()
    assert "unavailable" in response.json()["detail"]
    assert time.monotonic() - started < 5
