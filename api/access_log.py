"""Request log in the brief's format, and the request counter by route, method and status.

The log line: `GET http://localhost:8000/status/heartbeat 204 0.014161s`.

A bare ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware). ACCESS_LOG=false raises the `api.access`
logger's level above INFO, and the middleware then passes requests through untouched.
"""

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.metrics import HTTP_REQUESTS

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


def _route(scope: Scope) -> str:
    """The route template a request matched (a bounded label), as set by the hot path or Starlette's router."""
    if "notify.route" in scope:
        return str(scope["notify.route"])
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))


class AccessLogMiddleware:
    """Logs method, URL, status and duration of every HTTP request at INFO."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def _count_only(self, scope: Scope, receive: Receive, send: Send) -> None:
        code = 500

        async def send_with_status(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            HTTP_REQUESTS.labels(_route(scope), scope["method"], str(code)).inc()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request, count it, and log it once the response has been sent."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not logger.isEnabledFor(logging.INFO):
            await self._count_only(scope, receive, send)
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
            HTTP_REQUESTS.labels(_route(scope), scope["method"], str(status["code"])).inc()
            logger.info("%s %s %d %.6fs", scope["method"], _url(scope), status["code"], time.perf_counter() - start)
