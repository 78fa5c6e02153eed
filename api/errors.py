"""The service's errors: what went wrong, the HTTP status that says so, and the name GOV.UK Notify's clients see.

`api.handlers` answers them: `{"detail": ...}` on the native routes; on the v2 routes (`/v2/...`), in Notify's
shape `{"status_code": N, "errors": [{"error": ..., "message": ...}]}`, where `error` is the type's `notify_error`,
a wire name set explicitly on every type (renaming a class changes nothing a client sees). `NotifyError`s take
Notify's shape on every route.

    ApiError(detail, status_code, headers)   notify_error
    ├── UnauthorizedError             401    UnauthorizedError (with `WWW-Authenticate: Bearer`)
    ├── DisabledError                 403    DisabledError (the admin API without ADMIN_TOKEN, keys without SECRET_KEY)
    ├── BadRequestError         400, 413, 415 BadRequestError (the Idempotency-Key, the body's size, its type)
    ├── NotFoundError                 404    NotFoundError
    ├── ConflictError                 409    ConflictError
    │   └── IdempotencyKeyInFlightError      IdempotencyKeyInFlightError
    ├── IdempotentAnswerGoneError     410    IdempotentAnswerGoneError
    ├── IdempotencyKeyMismatchError   422    IdempotencyKeyMismatchError
    ├── RateLimitedError              429    RateLimitError (with `Retry-After` and the RateLimit-* headers)
    └── RetryLaterError               503    (with `Retry-After`)
        ├── BacklogFullError                 BacklogFullError
        ├── RedisUnresponsiveError           RedisUnresponsiveError: nothing was queued, a retry is safe
        └── WriteOutcomeUnknownError         WriteOutcomeUnknownError: the request may have been queued
            └── ReplicasUnconfirmedError     ReplicasUnconfirmedError: queued, not yet on REDIS_WAIT_REPLICAS replicas

    NotifyError(message, status_code)  400  BadRequestError
    ├── NotifyAuthError          401 or 403  AuthError
    ├── NotifyValidationError           400  ValidationError, one per problem
    └── NotifyNotFoundError             404  NoResultFound
"""

from typing import ClassVar

__all__ = [
    "MAX_ERRORS_LISTED",
    "RETRY_AFTER_SECONDS",
    "ApiError",
    "BacklogFullError",
    "BadRequestError",
    "ConflictError",
    "DisabledError",
    "IdempotencyKeyInFlightError",
    "IdempotencyKeyMismatchError",
    "IdempotentAnswerGoneError",
    "NotFoundError",
    "NotifyAuthError",
    "NotifyError",
    "NotifyNotFoundError",
    "NotifyValidationError",
    "RateLimitedError",
    "RedisUnresponsiveError",
    "ReplicasUnconfirmedError",
    "RetryLaterError",
    "UnauthorizedError",
    "WriteOutcomeUnknownError",
]

RETRY_AFTER_SECONDS = "2"
#: Most problems one error answer lists, native or Notify's (a 3.6 MB request can hold 250,000: a 24 MB answer);
#: a last entry says how many more there were. Notify's clients read the first.
MAX_ERRORS_LISTED = 100


def _require_notify_error(cls: type) -> None:
    if "notify_error" not in cls.__dict__:  # inherited, it would silently give the parent's name on the wire
        raise TypeError(f"{cls.__name__} must set its own notify_error")


class ApiError(Exception):
    """An error the client should see as it is: `detail`, with `status_code` (else the type's) and `headers`."""

    status_code: int = 400
    headers: dict[str, str] | None = None
    #: The `error` of GOV.UK Notify's body on the v2 routes.
    notify_error: ClassVar[str] = "ApiError"
    #: The detail when none is given.
    default_detail: ClassVar[str] = ""

    def __init__(
        self, detail: str | None = None, status_code: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        detail = detail or self.default_detail
        super().__init__(detail)
        self.detail = detail
        #: The message of GOV.UK Notify's body on the v2 routes.
        self.notify_detail = detail
        if status_code is not None:
            self.status_code = status_code
        if headers is not None:
            self.headers = headers

    def __init_subclass__(cls) -> None:
        """Refuse a subclass without a wire name of its own."""
        super().__init_subclass__()
        _require_notify_error(cls)


class UnauthorizedError(ApiError):
    """No credentials, or credentials that are not valid."""

    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}
    notify_error = "UnauthorizedError"


class DisabledError(ApiError):
    """A part of the API that configuration leaves off: the admin API (no ADMIN_TOKEN), issuing keys (no SECRET_KEY)."""

    status_code = 403
    notify_error = "DisabledError"


class BadRequestError(ApiError):
    """A request that cannot be taken as sent: 400, or the status that says why (413 too large, 415 not JSON)."""

    notify_error = "BadRequestError"


class NotFoundError(ApiError):
    """The requested resource does not exist."""

    status_code = 404
    notify_error = "NotFoundError"


class ConflictError(ApiError):
    """The resource exists already (a name is taken)."""

    status_code = 409
    notify_error = "ConflictError"


class IdempotencyKeyInFlightError(ConflictError):
    """A request with the same Idempotency-Key is still being written by this process."""

    notify_error = "IdempotencyKeyInFlightError"
    default_detail = "a request with this Idempotency-Key is still in progress; retry once it has been answered"


class IdempotentAnswerGoneError(ApiError):
    """A retry whose first request's notifications are no longer kept (RETENTION_DAYS): its answer cannot be rebuilt."""

    status_code = 410
    notify_error = "IdempotentAnswerGoneError"


class IdempotencyKeyMismatchError(ApiError):
    """The Idempotency-Key was used before with another request body."""

    status_code = 422
    notify_error = "IdempotencyKeyMismatchError"


class RateLimitedError(ApiError):
    """The service is past its rate limit: 429; nothing of the request was queued."""

    status_code = 429
    notify_error = "RateLimitError"

    def __init__(
        self, detail: str, retry_after: int, rate_headers: list[tuple[bytes, bytes]], per_minute: int = 0
    ) -> None:
        headers = {"Retry-After": str(retry_after)} | {name.decode(): value.decode() for name, value in rate_headers}
        super().__init__(detail, headers=headers)
        # GOV.UK Notify's wording (its clients may look for it); counted in notifications here
        self.notify_detail = f"Exceeded rate limit for key type LIVE of {per_minute} requests per 60 seconds"


class RetryLaterError(ApiError):
    """The service cannot take the request now: 503 with `Retry-After`."""

    status_code = 503
    headers = {"Retry-After": RETRY_AFTER_SECONDS}
    notify_error = "RetryLaterError"


class BacklogFullError(RetryLaterError):
    """The stream holds MAX_BACKLOG_ENTRIES not yet stored requests: accept nothing until it drains."""

    notify_error = "BacklogFullError"


class RedisUnresponsiveError(RetryLaterError):
    """Redis is known not to answer (a flush timed out): the write was not sent, so a retry cannot duplicate it."""

    notify_error = "RedisUnresponsiveError"
    default_detail = "Redis is not answering: nothing of this request was queued; retry later"


class WriteOutcomeUnknownError(RetryLaterError):
    """Redis did not confirm the write in time (timeout, lost connection): it may still have been applied."""

    notify_error = "WriteOutcomeUnknownError"
    default_detail = (
        "Redis did not confirm the write within REDIS_TIMEOUT_SECONDS: the request may or may not have been "
        "queued, and a retry may queue it twice"
    )


class ReplicasUnconfirmedError(WriteOutcomeUnknownError):
    """Redis applied the write, but fewer than REDIS_WAIT_REPLICAS replicas confirmed it in time."""

    notify_error = "ReplicasUnconfirmedError"
    default_detail = (
        "Redis applied the write, but fewer than REDIS_WAIT_REPLICAS replicas confirmed it within "
        "REDIS_TIMEOUT_SECONDS: a failover now could lose it"
    )


class NotifyError(Exception):
    """An error of the GOV.UK Notify routes, in Notify's shape on any route: `message`, with `status_code`."""

    status_code: int = 400
    #: The `error` of Notify's body (the name of the exception class in Notify's own code).
    notify_error: ClassVar[str] = "BadRequestError"

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code

    def __init_subclass__(cls) -> None:
        """Refuse a subclass without a wire name of its own."""
        super().__init_subclass__()
        _require_notify_error(cls)


class NotifyAuthError(NotifyError):
    """A GOV.UK Notify token that is missing or not valid (`api.govuk.auth`): 401 or 403, with Notify's message."""

    status_code = 403
    notify_error = "AuthError"


class NotifyValidationError(NotifyError):
    """A v2 request that breaks Notify's schema: every problem, each in Notify's words."""

    notify_error = "ValidationError"

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages[:MAX_ERRORS_LISTED]))
        self.messages = messages


class NotifyNotFoundError(NotifyError):
    """A v2 lookup that found nothing."""

    status_code = 404
    notify_error = "NoResultFound"

    def __init__(self, message: str = "No result found") -> None:
        super().__init__(message)
