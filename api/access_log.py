"""Request log in the brief's format: `GET http://localhost:8000/status/heartbeat 204 0.014161s`.

A bare ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware). ACCESS_LOG=false raises the `api.access`
logger's level above INFO, and the middleware then passes requests through untouched.
"""

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("api.access")


def _url(scope: Scope) -> str:
    host = "localhost"
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host = value.decode("latin-1")
            break
    query = scope.get("query_string", b"")
    path = scope.get("root_path", "") + scope["path"]
    return f"{scope.get('scheme', 'http')}://{host}{path}" + (f"?{query.decode('latin-1')}" if query else "")


class AccessLogMiddleware:
    """Logs method, URL, status and duration of every HTTP request at INFO."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request and log it once the response has been sent."""
        if scope["type"] != "http" or not logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def send_with_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            logger.info("%s %s %d %.6fs", scope["method"], _url(scope), status["code"], time.perf_counter() - start)
