"""Every mapping from an error to an HTTP answer, in one place.

Errors are JSON `{"detail": ...}` like FastAPI's own 422s; the GOV.UK Notify routes answer in Notify's shape
instead, `{"status_code": N, "errors": [{"error": "AuthError", "message": "..."}]}`. On those routes (`/v2/...`)
every error takes Notify's shape: the `ApiError`s below (error: the class's name, `RateLimitError` for a 429), an
unavailable Redis or Postgres (503), and request validation errors, which become Notify's 400 `ValidationError`s
(`<field> <what is wrong>`). The tree of the service's own exceptions:

    ApiError                      -> its `status_code`
    ├── UnauthorizedError         -> 401 (with `WWW-Authenticate: Bearer`)
    ├── AdminDisabledError        -> 403
    ├── KeyIssuingDisabledError   -> 403
    ├── NotFoundError             -> 404
    ├── InvalidIdempotencyKeyError -> 400
    ├── ConflictError             -> 409
    │   └── IdempotencyKeyInFlightError -> 409
    ├── IdempotencyKeyMismatchError -> 422
    ├── IdempotentAnswerGoneError -> 410
    ├── PayloadTooLargeError      -> 413
    ├── UnsupportedMediaTypeError -> 415
    ├── RateLimitedError          -> 429 (with `Retry-After` and the RateLimit-* headers)
    └── RetryLaterError           -> 503 (with `Retry-After`)
        ├── BacklogFullError
        ├── RedisUnresponsiveError: nothing was queued
        └── WriteOutcomeUnknownError: the request may have been queued
            └── ReplicasUnconfirmedError: queued, but not yet on REDIS_WAIT_REPLICAS replicas

    NotifyError                   -> its `status_code`, in GOV.UK Notify's shape (error `BadRequestError`)
    ├── NotifyAuthError           -> 401 (no token, not Bearer) or 403 (the rest), error `AuthError`
    ├── NotifyValidationError     -> 400, one `ValidationError` per problem (up to MAX_ERRORS_LISTED, then a count)
    └── NotifyNotFoundError       -> 404, error `NoResultFound`, `No result found`

Redis or Postgres being unreachable answers 503 with `Retry-After`, never a 500.
"""

import logging
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import ReadOnlyError as RedisReadOnlyError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.flush import reply_code
from shared import failures
from shared.schemas import PATTERN_MESSAGES

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "2"
#: Most problems one error answer lists, native or Notify's (a 3.6 MB request can hold 250,000: a 24 MB answer);
#: a last entry says how many more there were. Notify's clients read the first.
MAX_ERRORS_LISTED = 100


class ApiError(Exception):
    """An error the client should see as it is."""

    status_code = 400
    headers: dict[str, str] | None = None
    #: The detail when none is given.
    default_detail = ""

    def __init__(self, detail: str | None = None) -> None:
        detail = detail or self.default_detail
        super().__init__(detail)
        self.detail = detail


class UnauthorizedError(ApiError):
    """No credentials, or credentials that are not valid."""

    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}


class AdminDisabledError(ApiError):
    """The admin API is switched off (no ADMIN_TOKEN)."""

    status_code = 403


class KeyIssuingDisabledError(ApiError):
    """No API key can be issued: SECRET_KEY, which keeps the keys' secrets, is not set."""

    status_code = 403


class NotifyError(Exception):
    """An error of the GOV.UK Notify routes: answered as `{"status_code", "errors": [{"error", "message"}]}`."""

    status_code = 400
    #: The `error` of Notify's body (the name of the exception class in Notify's own code).
    error = "BadRequestError"

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class NotifyAuthError(NotifyError):
    """A GOV.UK Notify token that is missing or not valid (`api.govuk.auth`): 401 or 403, with Notify's message."""

    status_code = 403
    error = "AuthError"


class NotifyValidationError(NotifyError):
    """A v2 request that breaks Notify's schema: every problem, each in Notify's words."""

    error = "ValidationError"

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages[:MAX_ERRORS_LISTED]))
        self.messages = messages


class NotifyNotFoundError(NotifyError):
    """A v2 lookup that found nothing."""

    status_code = 404
    error = "NoResultFound"

    def __init__(self, message: str = "No result found") -> None:
        super().__init__(message)


class ConflictError(ApiError):
    """The resource exists already (a name is taken)."""

    status_code = 409


class IdempotencyKeyInFlightError(ConflictError):
    """A request with the same Idempotency-Key is still being written by this process."""

    default_detail = "a request with this Idempotency-Key is still in progress; retry once it has been answered"


class IdempotentAnswerGoneError(ApiError):
    """A retry whose first request's notifications are no longer kept (RETENTION_DAYS): its answer cannot be rebuilt."""

    status_code = 410


class InvalidIdempotencyKeyError(ApiError):
    """The Idempotency-Key header is empty, longer than 255 characters or not printable ASCII."""

    status_code = 400


class IdempotencyKeyMismatchError(ApiError):
    """The Idempotency-Key was used before with another request body."""

    status_code = 422


class RateLimitedError(ApiError):
    """The service is past its rate limit: 429; nothing of the request was queued."""

    status_code = 429

    def __init__(
        self, detail: str, retry_after: int, rate_headers: list[tuple[bytes, bytes]], per_minute: int = 0
    ) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)} | {
            name.decode(): value.decode() for name, value in rate_headers
        }
        #: GOV.UK Notify's wording, for the v2 routes (its clients may look for it); counted in notifications here.
        self.notify_detail = f"Exceeded rate limit for key type LIVE of {per_minute} requests per 60 seconds"


class RetryLaterError(ApiError):
    """The service cannot take the request now: 503 with `Retry-After`."""

    status_code = 503
    headers = {"Retry-After": RETRY_AFTER_SECONDS}


class BacklogFullError(RetryLaterError):
    """The stream holds MAX_BACKLOG_ENTRIES not yet stored requests: accept nothing until it drains."""


class RedisUnresponsiveError(RetryLaterError):
    """Redis is known not to answer (a flush timed out): the write was not sent, so a retry cannot duplicate it."""

    default_detail = "Redis is not answering: nothing of this request was queued; retry later"


class WriteOutcomeUnknownError(RetryLaterError):
    """Redis did not confirm the write in time (timeout, lost connection): it may still have been applied."""

    default_detail = (
        "Redis did not confirm the write within REDIS_TIMEOUT_SECONDS: the request may or may not have been "
        "queued, and a retry may queue it twice"
    )


class ReplicasUnconfirmedError(WriteOutcomeUnknownError):
    """Redis applied the write, but fewer than REDIS_WAIT_REPLICAS replicas confirmed it in time."""

    default_detail = (
        "Redis applied the write, but fewer than REDIS_WAIT_REPLICAS replicas confirmed it within "
        "REDIS_TIMEOUT_SECONDS: a failover now could lose it"
    )


class NotFoundError(ApiError):
    """The requested resource does not exist."""

    status_code = 404


class UnsupportedMediaTypeError(ApiError):
    """The request body is not JSON."""

    status_code = 415


class PayloadTooLargeError(ApiError):
    """The request body is larger than MAX_BODY_BYTES, or what it would queue is larger than MAX_QUEUED_BYTES."""

    status_code = 413


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
#: Notify's `error` for the service's own errors on the v2 routes (others: the class's name).
_NOTIFY_ERROR_NAMES = {
    "RateLimitedError": "RateLimitError",
    "PayloadTooLargeError": "BadRequestError",
    "UnsupportedMediaTypeError": "BadRequestError",
    "InvalidIdempotencyKeyError": "BadRequestError",
}


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
        name = _NOTIFY_ERROR_NAMES.get(type(exc).__name__, type(exc).__name__)
        message = exc.notify_detail if isinstance(exc, RateLimitedError) else exc.detail
        return notify_errors_response(exc.status_code, [(name, message)], exc.headers)
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
    return notify_errors_response(exc.status_code, [(exc.error, message) for message in exc.messages])


async def _notify_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NotifyError)
    return notify_errors_response(exc.status_code, [(exc.error, exc.message)])


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
    )
    for exc_type in unavailable:
        app.add_exception_handler(exc_type, _unavailable)
