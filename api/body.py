"""Reads a request body as raw JSON bytes, enforcing the content type and MAX_BODY_BYTES.

Routes parse these bytes once with pydantic's Rust JSON parser (`model_validate_json`), skipping FastAPI's
dict-then-validate body handling, which costs twice as much per request.
"""

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import PayloadTooLargeError, UnsupportedMediaTypeError, error_response


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


async def read_json_body(content_type: str | None, receive: Receive, max_bytes: int) -> bytes:
    """Return the body of a JSON request, read straight from the ASGI `receive`.

    A missing Content-Type is taken as JSON; any other type than JSON is refused. A declared Content-Length over
    `max_bytes` was refused before (`BodyLimitMiddleware`); this counts the bytes as they come.

    Raises:
        UnsupportedMediaTypeError: the Content-Type is not JSON (415).
        PayloadTooLargeError: the body is larger than `max_bytes` (413).
        ClientDisconnect: the client left before sending the whole body.
    """
    if content_type is not None and not _is_json(content_type):
        raise UnsupportedMediaTypeError(f"Content-Type must be application/json, not {content_type!r}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLargeError(f"request body is larger than {max_bytes} bytes")
        if not message.get("more_body", False):
            return b"".join((*chunks, chunk)) if chunks else chunk
        chunks.append(chunk)


class BodyLimitMiddleware:
    """Refuses, before any route or authentication runs, a request whose Content-Length is over MAX_BODY_BYTES.

    The notification routes also count the bytes of bodies sent without a length (`read_json_body`).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 413 to an oversized declared body, else pass the request on."""
        if scope["type"] == "http":
            limit: int = scope["app"].state.settings.max_body_bytes
            for name, value in scope.get("headers", ()):
                if name == b"content-length" and value.isdigit() and int(value) > limit:
                    response = error_response(f"request body is larger than {limit} bytes", 413)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
