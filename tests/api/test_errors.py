"""The service's errors as clients see them: status, headers and GOV.UK Notify's `error` name on the v2 routes."""

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI
from redis import exceptions as redis_errors

from api import errors
from api.handlers import install_error_handlers

RATE_HEADERS = [(b"RateLimit-Limit", b"10"), (b"RateLimit-Remaining", b"0")]

#: (the error, its status, its `error` on the v2 routes, headers it adds); the names are wire format: keep them.
CASES: list[tuple[Callable[[], Exception], int, str, dict[str, str]]] = [
    (lambda: errors.UnauthorizedError("no key"), 401, "UnauthorizedError", {"www-authenticate": "Bearer"}),
    (lambda: errors.DisabledError("off"), 403, "DisabledError", {}),
    (lambda: errors.BadRequestError("bad key"), 400, "BadRequestError", {}),
    (lambda: errors.BadRequestError("too large", status_code=413), 413, "BadRequestError", {}),
    (lambda: errors.BadRequestError("not JSON", status_code=415), 415, "BadRequestError", {}),
    (lambda: errors.NotFoundError("none"), 404, "NotFoundError", {}),
    (lambda: errors.ConflictError("taken"), 409, "ConflictError", {}),
    (lambda: errors.IdempotencyKeyInFlightError("busy"), 409, "IdempotencyKeyInFlightError", {}),
    (lambda: errors.IdempotentAnswerGoneError("gone"), 410, "IdempotentAnswerGoneError", {}),
    (lambda: errors.IdempotencyKeyMismatchError("other"), 422, "IdempotencyKeyMismatchError", {}),
    (lambda: errors.BacklogFullError("full"), 503, "BacklogFullError", {"retry-after": "2"}),
    (lambda: errors.RedisUnresponsiveError("asleep"), 503, "RedisUnresponsiveError", {"retry-after": "2"}),
    (lambda: errors.WriteOutcomeUnknownError("lost"), 503, "WriteOutcomeUnknownError", {"retry-after": "2"}),
    (lambda: errors.ReplicasUnconfirmedError("alone"), 503, "ReplicasUnconfirmedError", {"retry-after": "2"}),
]


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app whose one route raises the error the `case` query parameter names."""
    app = FastAPI()
    install_error_handlers(app)
    made = [make for make, *_ in CASES] + [
        lambda: errors.RateLimitedError("slow down", 7, RATE_HEADERS, per_minute=10),
        lambda: errors.NotifyAuthError("not a token"),
        lambda: errors.NotifyValidationError(["a is wrong", "b is wrong"]),
    ]

    async def fail(case: int) -> None:
        raise made[case]()

    app.add_api_route("/native/fail", fail)
    app.add_api_route("/v2/fail", fail)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


@pytest.mark.parametrize(("case", "status", "name", "headers"), [(n, *rest) for n, (_, *rest) in enumerate(CASES)])
async def test_each_error_has_its_status_and_its_notify_name(
    http: httpx.AsyncClient, case: int, status: int, name: str, headers: dict[str, str]
) -> None:
    detail = str(CASES[case][0]())
    native = await http.get("/native/fail", params={"case": case})
    v2 = await http.get("/v2/fail", params={"case": case})

    assert (native.status_code, native.json()) == (status, {"detail": detail})
    assert (v2.status_code, v2.json()) == (
        status,
        {"status_code": status, "errors": [{"error": name, "message": detail}]},
    )
    for answer in (native, v2):
        assert {header: answer.headers.get(header) for header in headers} == headers


async def test_a_rate_limit_answers_in_notify_words_on_the_v2_routes(http: httpx.AsyncClient) -> None:
    case = len(CASES)
    native = await http.get("/native/fail", params={"case": case})
    v2 = await http.get("/v2/fail", params={"case": case})

    assert (native.status_code, native.json()) == (429, {"detail": "slow down"})
    notify_words = "Exceeded rate limit for key type LIVE of 10 requests per 60 seconds"
    assert v2.json() == {"status_code": 429, "errors": [{"error": "RateLimitError", "message": notify_words}]}
    for answer in (native, v2):
        assert (answer.headers["retry-after"], answer.headers["ratelimit-remaining"]) == ("7", "0")


async def test_notify_errors_take_notify_shape_on_every_route(http: httpx.AsyncClient) -> None:
    auth, invalid = len(CASES) + 1, len(CASES) + 2
    for path in ("/native/fail", "/v2/fail"):
        refused = await http.get(path, params={"case": auth})
        broken = await http.get(path, params={"case": invalid})

        assert refused.json() == {"status_code": 403, "errors": [{"error": "AuthError", "message": "not a token"}]}
        assert broken.json() == {
            "status_code": 400,
            "errors": [
                {"error": "ValidationError", "message": "a is wrong"},
                {"error": "ValidationError", "message": "b is wrong"},
            ],
        }


def test_an_error_type_without_its_own_notify_name_is_refused() -> None:
    # inherited, a subclass would answer with its parent's name without anyone noticing
    with pytest.raises(TypeError, match="notify_error"):

        class _Unnamed(errors.ConflictError):
            pass

    with pytest.raises(TypeError, match="notify_error"):

        class _UnnamedNotify(errors.NotifyError):
            pass


@pytest.mark.parametrize(
    "error",
    [
        redis_errors.ClusterDownError("The cluster is down"),  # as redis-py raises CLUSTERDOWN: the code stripped
        redis_errors.MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
        redis_errors.TryAgainError("Multiple keys request during rehashing of slot"),
        redis_errors.MovedError("3999 127.0.0.1:6381"),
        redis_errors.AskError("3999 127.0.0.1:6381"),
    ],
)
async def test_a_cluster_in_failover_is_a_503_not_a_500(error: Exception) -> None:
    app = FastAPI()
    install_error_handlers(app)

    async def fail() -> None:
        raise error

    app.add_api_route("/notifications/v1/", fail)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        answer = await client.get("/notifications/v1/")

    assert answer.status_code == 503, answer.text
    assert "retry-after" in answer.headers
