"""The hot path: the notification routes served straight from ASGI, before FastAPI's routing.

Recognises the notification routes by method and path and has `api.ingest.serve` answer them from the raw request;
errors become responses through the app's own exception handlers, an unexpected one is logged and a 500. Anything
else, including a GET whose id is not a canonical UUID (FastAPI reports its 422), goes on to FastAPI.
"""

import logging
from uuid import UUID

from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from api import ingest
from api.handlers import error_response
from api.ingest import Route

logger = logging.getLogger(__name__)
PREFIX = ingest.SINGLE.path
_V2_PREFIX = ingest.V2_PREFIX + "/"
_V2_SENDS = {"email": ingest.V2_EMAIL, "sms": ingest.V2_SMS}


def _id_route(route: Route, rest: str) -> tuple[Route, UUID | None] | None:
    if len(rest) != 36:
        return None
    try:
        return route, UUID(rest)
    except ValueError:
        return None


def _route(method: str, path: str) -> tuple[Route, UUID | None] | None:
    """Return the route of a hot-path request and the id a GET asks for, or None."""
    if path.startswith(_V2_PREFIX):
        rest = path[len(_V2_PREFIX) :]
        if method == "POST":
            route = _V2_SENDS.get(rest)
            return None if route is None else (route, None)
        return _id_route(ingest.V2_ONE, rest) if method == "GET" else None
    if not path.startswith(PREFIX):
        return None
    rest = path[len(PREFIX) :]
    if method == "POST":
        if rest == "":
            return ingest.SINGLE, None
        if rest == "multiple":
            return ingest.MULTIPLE, None
    elif method == "GET":
        return _id_route(ingest.ONE, rest)
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
        route, notification_id = matched
        scope["notify.route"] = route.path
        try:
            status, body, headers = await ingest.serve(self.fastapi_app.state, route, scope, receive, notification_id)
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
