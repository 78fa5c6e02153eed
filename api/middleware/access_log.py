"""Every HTTP request gets an id (`X-Request-ID`), a count by route, method and status, and one log line at INFO.

The line is the brief's: `GET http://127.0.0.1:8000/status/heartbeat 204 0.001254s` (LOG_FORMAT=json: the same
message, with `request_id`). ACCESS_LOG=false writes none; ACCESS_LOG_PROBES=false leaves out `/status/*`'s.
"""

import itertools
import logging
import os
import re
import time
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logs import log_info
from shared.metrics import HTTP_REQUESTS

logger = logging.getLogger("api.access")
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: The status logged and counted for a request whose client left before the answer (nginx's convention).
CLIENT_CLOSED = 499
#: Where the health probes ask (liveness, readiness): left out of the log with ACCESS_LOG_PROBES=false.
PROBE_PATHS = "/status/"


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


def _log(scope: Scope, code: int, seconds: float, rid: str) -> None:
    """Write the request's line, unless it is a probe's and ACCESS_LOG_PROBES is false."""
    probe = (scope.get("root_path", "") + scope["path"]).startswith(PROBE_PATHS)
    if probe and not scope["app"].state.settings.access_log_probes:
        return
    log_info(logger, f"{scope['method']} {_url(scope)} {code} {seconds:.6f}s", {"request_id": rid})


_counters: dict[tuple[str, str, int], Any] = {}
# Made request ids: a random prefix per process and a counter (no system call per request), 32 hex digits.
_ID_PREFIX = os.urandom(12).hex()
_id_counter = itertools.count()


def _count(route: str, method: str, code: int) -> None:
    """Count a request; the labelled children are looked up once (labels() costs more than the increment)."""
    key = (route, method, code)
    counter = _counters.get(key)
    if counter is None:
        counter = _counters[key] = HTTP_REQUESTS.labels(route, method, str(code))
    counter.inc()


def request_id(scope: Scope) -> str:
    """The id of a request: the client's `X-Request-ID` when sane (1-64 of [A-Za-z0-9._-]), else a new one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _SANE_ID.fullmatch(candidate):
                return candidate
            break
    return f"{_ID_PREFIX}{next(_id_counter):08x}"


class AccessLogMiddleware:
    """Gives every HTTP request an id (echoed in `X-Request-ID`), counts it, and logs it at INFO.

    A request whose client left before it was answered is logged and counted as 499, not as a server error.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request, count it, and log it once the response has been sent."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = request_id(scope)
        scope["notify.request_id"] = rid
        code = CLIENT_CLOSED  # no answer sent and no error raised: the client left before it was answered

        async def send_with_status(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        except ClientDisconnect:  # left while a FastAPI route read its body (Starlette may have "sent" a 500)
            code = CLIENT_CLOSED
        except BaseException:
            if code == CLIENT_CLOSED:
                code = 500
            raise
        finally:
            _count(_route(scope), scope["method"], code)
            if logger.isEnabledFor(logging.INFO):
                _log(scope, code, time.perf_counter() - start, rid)
