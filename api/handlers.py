"""Every mapping from an exception to an HTTP answer, in one place (`install_error_handlers`).

Errors are JSON `{"detail": ...}`, like FastAPI's own 422s. On the GOV.UK Notify routes (`/v2/...`) every error
takes Notify's shape instead, `{"status_code": N, "errors": [{"error": ..., "message": ...}]}`: the service's own
errors (`api.errors`, each with its `notify_error`), routing's 404 and 405, request validation errors (Notify's 400
`ValidationError`s, `<field> <what is wrong>`) and an unavailable backing store. Redis or Postgres unreachable or
unable to serve is a 503 with `Retry-After`, never a 500; any other error of theirs is raised as it is (a 500).
"""

import logging
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from redis.exceptions import AskError, ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import ReadOnlyError as RedisReadOnlyError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import MAX_ERRORS_LISTED, RETRY_AFTER_SECONDS, ApiError, NotifyError, NotifyValidationError
from api.flush import reply_code
from shared import failures
from shared.schemas import PATTERN_MESSAGES

__all__ = ["NOTIFY_PREFIX", "error_response", "install_error_handlers", "notify_errors_response"]

logger = logging.getLogger(__name__)


def _printable(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _json_safe(value: object) -> object:
    """Make an error detail serializable: integers beyond 64 bits (which JSON input may hold) become strings."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)
    return value


def error_response(detail: object, status_code: int, headers: dict[str, str] | None = None) -> Response:
    """Return the JSON error body every error of the service uses."""
    # error contexts may hold bytes, exceptions or other objects; orjson writes NaN and Infinity as null
    return Response(
        orjson.dumps({"detail": _json_safe(detail)}, default=_printable),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


#: Path prefix of the GOV.UK Notify v2 routes, whose every error takes Notify's shape.
NOTIFY_PREFIX = "/v2/"


def _is_notify(request: Request) -> bool:
    return request.url.path.startswith(NOTIFY_PREFIX)


def _left_out(count: int) -> str:
    return f"and {count} more errors, not listed (an answer lists the first {MAX_ERRORS_LISTED})"


def notify_errors_response(
    status_code: int, errors: list[tuple[str, str]], headers: dict[str, str] | None = None, *, unlisted: int = 0
) -> Response:
    """Return several errors in GOV.UK Notify's shape: `{"status_code": N, "errors": [{"error", "message"}...]}`.

    At most MAX_ERRORS_LISTED are listed, then one more saying how many were left out (those past the cap, and
    `unlisted` more the caller did not even put in `errors`), with the last listed one's `error`.
    """
    listed = [{"error": error, "message": message} for error, message in errors[:MAX_ERRORS_LISTED]]
    left_out = len(errors) - len(listed) + unlisted
    if left_out:
        listed.append({"error": listed[-1]["error"], "message": _left_out(left_out)})
    body = {"status_code": status_code, "errors": listed}
    return Response(
        orjson.dumps(_json_safe(body), default=_printable),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if _is_notify(request):
        return notify_errors_response(exc.status_code, [(exc.notify_error, exc.notify_detail)], exc.headers)
    return error_response(exc.detail, exc.status_code, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing's own errors (an unknown path, a method not allowed): FastAPI's answer, Notify's on the v2 routes."""
    assert isinstance(exc, StarletteHTTPException)
    if _is_notify(request):
        name = {404: "NoResultFound", 405: "MethodNotAllowed"}.get(exc.status_code, "BadRequestError")
        headers = dict(exc.headers) if exc.headers else None
        return notify_errors_response(exc.status_code, [(name, str(exc.detail))], headers)
    return await http_exception_handler(request, exc)


async def _notify_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NotifyValidationError)
    return notify_errors_response(exc.status_code, [(exc.notify_error, message) for message in exc.messages])


async def _notify_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NotifyError)
    return notify_errors_response(exc.status_code, [(exc.notify_error, exc.message)])


async def _unavailable(request: Request, exc: Exception) -> Response:
    logger.warning("dependency unavailable on %s %s: %r", request.method, request.url.path, exc)
    detail, headers = "a backing store is unavailable, retry later", {"Retry-After": RETRY_AFTER_SECONDS}
    if _is_notify(request):
        return notify_errors_response(503, [("ServiceUnavailableError", detail)], headers)
    return error_response(detail, 503, headers=headers)


def _validation_report(error: dict[str, Any]) -> dict[str, Any]:
    """Return one validation error as clients see it, on every route.

    Unparsable bodies (maybe megabytes, maybe not UTF-8) are not echoed back, and the service's regex constraints
    are explained in words.
    """
    report = dict(error)
    if report["type"] == "json_invalid":
        report.pop("input", None)
    elif report["type"] == "string_pattern_mismatch":
        report["msg"] = PATTERN_MESSAGES.get(str(report.get("ctx", {}).get("pattern")), report["msg"])
    return report


async def _invalid(request: Request, exc: Exception) -> Response:
    # FastAPI's own handler fails (a 500) on inputs it cannot serialize, such as NaN or 1e400 in the body
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    reports = [_validation_report(error) for error in errors[:MAX_ERRORS_LISTED]]
    if _is_notify(request):  # Notify's 400: `<field> <what is wrong>` per error
        messages = [f"{report['loc'][-1] if report.get('loc') else ''} {report['msg']}".strip() for report in reports]
        return notify_errors_response(
            400, [("ValidationError", message) for message in messages], unlisted=len(errors) - len(reports)
        )
    if len(errors) > MAX_ERRORS_LISTED:
        reports.append({"type": "too_many_errors", "loc": [], "msg": _left_out(len(errors) - MAX_ERRORS_LISTED)})
    return error_response(reports, 422)


#: Redis error replies that mean "cannot serve now" (loading, failed AOF write, read-only replica, out of memory).
UNAVAILABLE_REDIS_REPLIES = (
    "LOADING", "MISCONF", "READONLY", "OOM", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK",
)  # fmt: skip


async def _database_error(request: Request, exc: Exception) -> Response:
    if failures.database_unreachable(exc):  # else a bug or bad data: raised as it is (a 500, logged)
        return await _unavailable(request, exc)
    raise exc


async def _redis_reply(request: Request, exc: Exception) -> Response:
    if reply_code(exc) in UNAVAILABLE_REDIS_REPLIES:
        return await _unavailable(request, exc)
    raise exc


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on the app."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(NotifyError, _notify_error)
    app.add_exception_handler(NotifyValidationError, _notify_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    # Postgres: unreachable (`shared.failures`: connect errors, the pool exhausted, asyncpg's and SQLAlchemy's own)
    for database_error in (DBAPIError, SQLAlchemyTimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        app.add_exception_handler(database_error, _database_error)
    app.add_exception_handler(RedisResponseError, _redis_reply)
    unavailable = (
        RedisConnectionError,  # includes BusyLoadingError: Redis is reading its AOF after a restart
        RedisTimeoutError,
        RedisOutOfMemoryError,  # maxmemory reached (noeviction): nothing was written
        RedisReadOnlyError,  # a replica during failover
        # A cluster in failover: redis-py raises these with the reply's code stripped from the message, so
        # `reply_code` cannot see them ("The cluster is down"); MasterDownError and MovedError are subclasses.
        ClusterDownError,
        TryAgainError,
        AskError,
    )
    for exc_type in unavailable:
        app.add_exception_handler(exc_type, _unavailable)
