"""The hot path: the notification routes served straight from ASGI, skipping FastAPI's routing.

Producers call POST and GET far more than anything else, and on two cores FastAPI's router and request
machinery cost more per request than validation, Redis and serialization together. This middleware recognises
`POST /notifications/v1/`, `POST /notifications/v1/multiple` and `GET /notifications/v1/{uuid}`, and GOV.UK
Notify's `POST /v2/notifications/email|sms` and `GET /v2/notifications/{uuid}`, by path, has
`api.routes.notifications.serve` answer from the raw request (no Request, Headers or Response objects), turns
exceptions into responses with the app's own exception handlers, and sends the answer itself. Anything else —
including a GET whose id is not a UUID, so that FastAPI reports the 422 — goes on to FastAPI. The routes stay
declared in FastAPI for the OpenAPI docs.

It sits outside Starlette's own middleware stack (`api.main.NotifyAPI`): FastAPI's server-error, telemetry and
body-limit layers each cost a coroutine and a wrapped `send` per request, as much as validating the body. So the
hot path answers an unexpected exception itself, as they would have: logged, and a 500.
"""

import logging
from uuid import UUID

from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from api.handlers import error_response
from api.routes import notifications

logger = logging.getLogger(__name__)
PREFIX = notifications.SINGLE


_V2_PREFIX = notifications.V2_PREFIX + "/"
_V2_SENDS = {"email": notifications.V2_EMAIL, "sms": notifications.V2_SMS}


def _id_route(route: str, rest: str) -> tuple[str, UUID | None] | None:
    if len(rest) != 36:
        return None
    try:
        return route, UUID(rest)
    except ValueError:
        return None


def _route(method: str, path: str) -> tuple[str, UUID | None] | None:
    """Return the route template of a hot-path request and the id a GET asks for, or None."""
    if path.startswith(_V2_PREFIX):
        rest = path[len(_V2_PREFIX) :]
        if method == "POST":
            route = _V2_SENDS.get(rest)
            return None if route is None else (route, None)
        return _id_route(notifications.V2_ONE, rest) if method == "GET" else None
    if not path.startswith(PREFIX):
        return None
    rest = path[len(PREFIX) :]
    if method == "POST":
        if rest == "":
            return notifications.SINGLE, None
        if rest == "multiple":
            return notifications.MULTIPLE, None
    elif method == "GET":
        return _id_route(notifications.ONE, rest)
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
        scope["notify.route"], notification_id = matched
        try:
            status, body, headers = await notifications.serve(
                self.fastapi_app.state, scope["notify.route"], scope, receive, notification_id
            )
        except ClientDisconnect:
            return  # the client left before sending its whole body: nobody to answer, nothing was accepted
        except Exception as exc:
            response = await self._error_response(Request(scope, receive), exc)
            status, body, headers = response.status_code, bytes(response.body), response.raw_headers
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _error_response(self, request: Request, exc: Exception) -> Response:
        for cls in type(exc).__mro__:
            handler = self.fastapi_app.exception_handlers.get(cls)
            if handler is not None:
                try:
                    response: Response = await handler(request, exc)  # type: ignore[misc]
                except Exception:  # handlers re-raise what they do not map (a Redis WRONGTYPE, say)
                    break
                return response
        logger.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response("internal server error", 500)
