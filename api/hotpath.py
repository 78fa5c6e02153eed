"""The hot path: the three notification routes served straight from ASGI, skipping FastAPI's routing.

Producers call POST and GET far more than anything else, and on two cores FastAPI's router and request
machinery cost more per request than validation, Redis and serialization together. This middleware recognises
`POST /notifications/v1/`, `POST /notifications/v1/multiple` and `GET /notifications/v1/{uuid}` by path and calls
the very handlers the FastAPI routes declare (they take only the request), turning exceptions into responses with
the app's own exception handlers, and sends the answer itself. Anything else — including a GET whose id is not
a UUID, so that FastAPI reports the 422 — goes on to FastAPI. The routes stay declared in FastAPI for the OpenAPI
docs.

It sits outside Starlette's own middleware stack (`api.main.NotifyAPI`): FastAPI's server-error, telemetry and
body-limit layers each cost a coroutine and a wrapped `send` per request, as much as validating the body. So the
hot path answers an unexpected exception itself, as they would have: logged, and a 500.
"""

import logging
from collections.abc import Awaitable, Callable
from uuid import UUID

from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response
from api.routes import notifications

logger = logging.getLogger(__name__)

PREFIX = notifications.router.prefix + "/"
Handler = Callable[[Request], Awaitable[Response]]


def _route(method: str, path: str) -> tuple[str, Handler] | None:
    """Return the route template and handler of a hot-path request, or None."""
    if not path.startswith(PREFIX):
        return None
    rest = path[len(PREFIX) :]
    if method == "POST":
        if rest == "":
            return PREFIX, notifications.create_notification
        if rest == "multiple":
            return PREFIX + "multiple", notifications.create_notifications
    elif method == "GET" and len(rest) == 36:
        try:
            notification_id = UUID(rest)
        except ValueError:
            return None
        return PREFIX + "{notification_id}", lambda request: notifications.get_notification(request, notification_id)
    return None


class HotPathMiddleware:
    """Serves the notification routes without FastAPI's router; passes everything else through."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a hot-path request, or hand the request on."""
        matched = _route(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if matched is None:
            await self.app(scope, receive, send)
            return
        scope["notify.route"], handler = matched
        scope["app"] = self.fastapi_app  # handlers reach the app's state through request.app
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except ClientDisconnect:
            return  # the client left before sending its whole body: nobody to answer, nothing was accepted
        except Exception as exc:
            response = await self._error_response(request, exc)
        await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})

    async def _error_response(self, request: Request, exc: Exception) -> Response:
        for cls in type(exc).__mro__:
            handler = self.fastapi_app.exception_handlers.get(cls)
            if handler is not None:
                response: Response = await handler(request, exc)  # type: ignore[misc]
                return response
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response("internal server error", 500)
