"""The access log: ACCESS_LOG_PROBES=false leaves the health probes' lines out, and only those."""

import httpx
import pytest

from api.main import create_app
from shared.settings import Settings


async def _logged_paths(settings: Settings, caplog: pytest.LogCaptureFixture) -> str:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost:8000") as client:
            caplog.clear()
            await client.get("/status/heartbeat")
            await client.get("/status/ready")
            await client.get("/notifications/v1/not-an-id")
            await client.get("/x/status/heartbeat")
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "api.access")


async def test_probes_are_logged_by_default(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="api.access")
    logged = await _logged_paths(settings, caplog)
    assert "GET http://localhost:8000/status/heartbeat 204" in logged
    assert "GET http://localhost:8000/status/ready" in logged


async def test_access_log_probes_false_leaves_out_the_probes_only(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="api.access")
    quiet = settings.model_copy(update={"access_log_probes": False})
    logged = await _logged_paths(quiet, caplog)
    assert "/status/heartbeat 204" not in logged.replace("/x/status/heartbeat", "")
    assert "/status/ready" not in logged
    assert "GET http://localhost:8000/notifications/v1/not-an-id" in logged
    assert "GET http://localhost:8000/x/status/heartbeat 404" in logged  # only the probes' own paths
    # and a later app with the default logs them again (the filter is the process-wide logger's)
    assert "/status/heartbeat 204" in await _logged_paths(settings, caplog)
