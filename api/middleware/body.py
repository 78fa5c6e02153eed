"""Request bounds: headers within MAX_HEADER_BYTES (431) and bodies within MAX_BODY_BYTES (413), on every route.

One exception: a native job's upload (`POST /notifications/v1/jobs`) streams its body into Postgres as it reads
it, bounded by MAX_JOB_ROWS rows (`api.routes.jobs`), so its body is let through whatever its length.

`BodyLimitMiddleware` refuses before any route runs; `read_json_body` reads the notification routes' raw JSON
bytes within the same limit.
"""

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import BadRequestError
from api.handlers import error_response

#: Native jobs: a POST here streams its body (`api.routes.jobs`), bounded by MAX_JOB_ROWS rather than MAX_BODY_BYTES.
JOBS_PATH = "/notifications/v1/jobs"


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


async def read_json_body(content_type: str | None, receive: Receive, max_bytes: int) -> bytes:
    """Return the body of a JSON request, read straight from the ASGI `receive`.

    A missing Content-Type is taken as JSON; any other type than JSON is refused. A declared Content-Length over
    `max_bytes` was refused before (`BodyLimitMiddleware`); this counts the bytes as they come, so that the route
    stops reading as soon as the limit is passed.

    Raises:
        BadRequestError: the Content-Type is not JSON (415); the body is larger than `max_bytes` (413).
        ClientDisconnect: the client left before sending the whole body.
    """
    if content_type is not None and not _is_json(content_type):
        raise BadRequestError(f"Content-Type must be application/json, not {content_type!r}", status_code=415)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise BadRequestError(f"request body is larger than {max_bytes} bytes", status_code=413)
        if not message.get("more_body", False):
            return b"".join((*chunks, chunk)) if chunks else chunk
        chunks.append(chunk)


class BodyLimitMiddleware:
    """Bounds every request, on every route, before any route or authentication runs.

    - Headers larger than MAX_HEADER_BYTES in total: 431 (uvicorn's httptools parser has no limit of its own).
    - A declared Content-Length over MAX_BODY_BYTES: 413 before a byte of the body is read.
    - A body without a length (chunked): its bytes are counted as the app reads them; once past MAX_BODY_BYTES the
      client gets 413 at once and the app sees the client leave (`http.disconnect`), so no route ever holds more
      than the limit, whatever it does with its body. The notification routes count too (`read_json_body`).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 431 or 413 to an oversized request, else pass it on (counting a chunked body's bytes)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = scope["app"].state.settings
        limit: int = settings.max_body_bytes
        streamed = scope["method"] == "POST" and scope["path"] == JOBS_PATH
        header_bytes = 0
        declared = False
        for name, value in scope["headers"]:
            header_bytes += len(name) + len(value)
            if name == b"content-length" and not streamed:
                declared = True
                if not value.isdigit() or int(value) > limit:  # uvicorn refuses a malformed length before us
                    await _refuse(scope, receive, send, f"request body is larger than {limit} bytes", 413)
                    return
        if header_bytes > settings.max_header_bytes:
            detail = f"request headers are larger than {settings.max_header_bytes} bytes (MAX_HEADER_BYTES)"
            await _refuse(scope, receive, send, detail, 431)
            return
        if declared or streamed or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        await _CountedBody(self.app, limit)(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, detail: str, status: int) -> None:
    await error_response(detail, status)(scope, receive, send)


class _CountedBody:
    """One request whose body has no declared length: counts its bytes, answers 413 once past the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.size = 0
        self.refused = False  # the 413 went out: whatever the app sends afterwards is dropped
        self.started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a counting `receive` and a `send` that the 413 can pre-empt."""

        async def counted_receive() -> Message:
            if self.refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                self.size += len(message.get("body", b""))
                if self.size > self.limit:
                    self.refused = True
                    if not self.started:
                        await error_response(f"request body is larger than {self.limit} bytes", 413)(
                            scope, receive, send
                        )
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if self.refused:
                return
            if message["type"] == "http.response.start":
                self.started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except ClientDisconnect:
            if not self.refused:
                raise
