"""Per-service rate limits: a token bucket in Redis, counted in notifications by the group-commit script."""

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any, cast
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.flush import RateState
from api.main import create_app
from api.rate_limiter import RateLimiter
from shared import keys, ratelimits
from shared.schemas import BRIEF_EXAMPLE
from shared.settings import Settings
from tests.helpers import Tenant, cache_keys, cli, command_calls, make_tenant, queued

BASE = "/notifications/v1"
ADMIN = {"Authorization": "Bearer test-admin-token"}


def _items(count: int) -> list[dict[str, Any]]:
    return [{"to": f"fan{n}@example.com", "personalization": {"n": str(n)}} for n in range(count)]


async def _limit(engine: AsyncEngine, redis: Redis, tenant: Tenant, per_minute: int | None) -> None:
    assert await ratelimits.set_rate_limit(engine, redis, tenant.service_id, per_minute) is not None


@pytest.fixture
async def second_app(settings: Settings, app: FastAPI) -> AsyncIterator[FastAPI]:
    """Another API process on the same servers: its own writer and caches, only Redis is shared."""
    other = create_app(settings)
    async with other.router.lifespan_context(other):
        yield other


async def test_the_admin_sets_shows_and_resets_a_services_limit(anonymous: httpx.AsyncClient, tenant: Tenant) -> None:
    url = f"/services/v1/{tenant.service_id}"
    changed = await anonymous.patch(url, json={"rate_limit_per_minute": 600}, headers=ADMIN)
    assert changed.status_code == 200, changed.text
    assert changed.json()["rate_limit_per_minute"] == changed.json()["effective_rate_limit_per_minute"] == 600
    (listed,) = (await anonymous.get("/services/v1/", headers=ADMIN)).json()
    assert listed["rate_limit_per_minute"] == 600

    reset = await anonymous.patch(url, json={"rate_limit_per_minute": None}, headers=ADMIN)
    assert reset.json()["rate_limit_per_minute"] is None
    assert reset.json()["effective_rate_limit_per_minute"] == 0  # RATE_LIMIT_PER_MINUTE's default: unlimited


@pytest.mark.parametrize(
    ("body", "status"),
    [({"rate_limit_per_minute": -1}, 422), ({"rate_limit_per_minute": "lots"}, 422), ({}, 422), ({"name": "x"}, 422)],
)
async def test_a_bad_limit_is_a_422(anonymous: httpx.AsyncClient, tenant: Tenant, body: Any, status: int) -> None:
    answer = await anonymous.patch(f"/services/v1/{tenant.service_id}", json=body, headers=ADMIN)
    assert answer.status_code == status
    assert "detail" in answer.json()


async def test_unknown_service_and_missing_admin_token(anonymous: httpx.AsyncClient, tenant: Tenant) -> None:
    url = f"/services/v1/{tenant.service_id}"
    assert (await anonymous.patch(url, json={"rate_limit_per_minute": 5})).status_code == 401
    unknown = await anonymous.patch(f"/services/v1/{tenant.key_id}", json={"rate_limit_per_minute": 5}, headers=ADMIN)
    assert unknown.status_code == 404


async def test_past_the_limit_a_request_gets_a_429_and_nothing_is_queued(
    client: httpx.AsyncClient, engine: AsyncEngine, redis: Redis, settings: Settings, tenant: Tenant
) -> None:
    await _limit(engine, redis, tenant, 5)
    remaining = []
    for _ in range(5):
        accepted = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE)
        assert accepted.status_code == 201
        assert accepted.headers["ratelimit-limit"] == "5"
        assert accepted.headers["ratelimit-policy"] == "5;w=60"
        remaining.append(int(accepted.headers["ratelimit-remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    assert 48 <= int(accepted.headers["ratelimit-reset"]) <= 60  # until 5 tokens are back, at one per 12 s

    refused = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 12
    assert refused.headers["ratelimit-remaining"] == "0"
    assert "rate limit of 5 notifications per minute" in refused.json()["detail"]
    assert await queued(redis, settings) == 5
    assert len(await cache_keys(redis, settings)) == 5


async def test_a_multiple_takes_one_token_per_notification(
    client: httpx.AsyncClient, engine: AsyncEngine, redis: Redis, settings: Settings, tenant: Tenant
) -> None:
    await _limit(engine, redis, tenant, 10)
    first = await client.post(f"{BASE}/multiple", json=_items(3))
    assert first.status_code == 201
    assert first.headers["ratelimit-remaining"] == "7"

    too_many = await client.post(f"{BASE}/multiple", json=_items(8))
    assert too_many.status_code == 429
    assert "needs 8" in too_many.json()["detail"]
    assert (await client.post(f"{BASE}/multiple", json=_items(7))).status_code == 201  # smaller ones still fit
    assert await queued(redis, settings) == 2


async def test_a_request_larger_than_the_whole_limit_is_a_413(
    client: httpx.AsyncClient, engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    await _limit(engine, redis, tenant, 10)
    answer = await client.post(f"{BASE}/multiple", json=_items(11))
    assert answer.status_code == 413
    assert "whole rate limit of 10" in answer.json()["detail"]
    assert (await client.post(f"{BASE}/multiple", json=_items(10))).status_code == 201


async def test_tokens_come_back_at_the_limits_rate(
    client: httpx.AsyncClient, engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    await _limit(engine, redis, tenant, 600)  # 10 per second
    emptied_at_the_latest = time.monotonic()  # the bucket is empty once the 600 are taken, after this
    assert (await client.post(f"{BASE}/multiple", json=_items(600))).status_code == 201
    # 9 tokens take 0.9 s to come back: refused however slowly this request follows, and told to retry in 1 s
    refused = await client.post(f"{BASE}/multiple", json=_items(9))
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"

    await asyncio.sleep(0.3)  # 3 tokens, and one more per 100 ms the requests below take
    answers = [(await client.post(f"{BASE}/", json=BRIEF_EXAMPLE)).status_code for _ in range(12)]
    # then more at once than can come back while they run (100 requests in under 10 s): some must be refused
    burst = await asyncio.gather(*(client.post(f"{BASE}/", json=BRIEF_EXAMPLE) for _ in range(100)))
    answers += [response.status_code for response in burst]
    came_back = 10 * (time.monotonic() - emptied_at_the_latest)  # however slowly the requests ran
    assert 2 <= answers.count(201) <= came_back + 1  # the limit holds: no more than the tokens that came back
    assert answers[:2] == [201, 201]  # the tokens that came back
    assert 429 in answers


async def test_a_limit_holds_across_two_api_processes(
    client: httpx.AsyncClient,
    second_app: FastAPI,
    engine: AsyncEngine,
    redis: Redis,
    settings: Settings,
    tenant: Tenant,
) -> None:
    await _limit(engine, redis, tenant, 6)
    transport = httpx.ASGITransport(app=second_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=tenant.headers) as other:
        answers = await asyncio.gather(
            *(http.post(f"{BASE}/", json=BRIEF_EXAMPLE) for _ in range(5) for http in (client, other))
        )
    assert sorted(a.status_code for a in answers) == [201] * 6 + [429] * 4
    assert await queued(redis, settings) == 6


async def test_once_refused_a_service_is_refused_in_process_until_its_tokens_can_be_back(
    client: httpx.AsyncClient, engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    await _limit(engine, redis, tenant, 1)
    assert (await client.post(f"{BASE}/", json=BRIEF_EXAMPLE)).status_code == 201
    assert (await client.post(f"{BASE}/", json=BRIEF_EXAMPLE)).status_code == 429
    scripts = await command_calls(redis, "evalsha")
    assert scripts > 0  # the writes before went through Redis: the count is read where they ran

    flood = [await client.post(f"{BASE}/", json=BRIEF_EXAMPLE) for _ in range(20)]

    assert {answer.status_code for answer in flood} == {429}
    assert all(30 <= int(answer.headers["retry-after"]) <= 60 for answer in flood)
    assert await command_calls(redis, "evalsha") == scripts  # no round trip for them


async def test_a_raised_limit_ends_the_in_process_refusals_within_auth_cache_seconds(
    settings: Settings, engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    app = create_app(settings.model_copy(update={"auth_cache_seconds": 1.0}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=tenant.headers) as client:
            await _limit(engine, redis, tenant, 2)
            answers = [(await client.post(f"{BASE}/", json=BRIEF_EXAMPLE)).status_code for _ in range(3)]
            assert answers == [201, 201, 429]
            assert app.state.rate_limits.refused_before(tenant.service_id, 1) is not None  # refused in-process now

            await _limit(engine, redis, tenant, 6000)
            for _ in range(600):  # until AUTH_CACHE_SECONDS have passed
                if app.state.rate_limits.known_limit(tenant.service_id) is None:
                    break
                await asyncio.sleep(0.05)
            after = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE)

    # at 2 a minute the old bucket could not hold a token again for ~30 s: only the new limit lets this through
    assert after.status_code == 201, after.text
    assert after.headers["ratelimit-limit"] == "6000"


async def test_a_service_at_its_limit_does_not_hold_back_another(
    client: httpx.AsyncClient, engine: AsyncEngine, redis: Redis, settings: Settings, tenant: Tenant, app: FastAPI
) -> None:
    await _limit(engine, redis, tenant, 2)
    other = await make_tenant(engine, redis, "tenant-b")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=other.headers) as quiet:
        flood, calm = await asyncio.gather(
            asyncio.gather(*(client.post(f"{BASE}/", json=BRIEF_EXAMPLE) for _ in range(50))),
            asyncio.gather(*(quiet.post(f"{BASE}/", json=BRIEF_EXAMPLE) for _ in range(50))),
        )
    assert sorted(a.status_code for a in flood) == [201] * 2 + [429] * 48
    assert {a.status_code for a in calm} == {201}
    assert all("ratelimit-limit" not in a.headers for a in calm)  # unlimited: no RateLimit headers
    assert await queued(redis, settings) == 52


async def test_a_replayed_idempotent_request_takes_no_token(
    client: httpx.AsyncClient, engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    await _limit(engine, redis, tenant, 1)
    keyed = {"Idempotency-Key": "once"}
    first = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=keyed)
    again = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=keyed)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert (await client.post(f"{BASE}/", json=BRIEF_EXAMPLE)).status_code == 429


async def test_the_default_applies_to_services_without_their_own_limit(
    settings: Settings, engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    unlimited = await make_tenant(engine, redis, "tenant-unlimited")
    await _limit(engine, redis, unlimited, 0)
    app = create_app(settings.model_copy(update={"rate_limit_per_minute": 2}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            limited = [await http.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=tenant.headers) for _ in range(3)]
            free = [await http.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=unlimited.headers) for _ in range(3)]
    assert [a.status_code for a in limited] == [201, 201, 429]
    assert [a.status_code for a in free] == [201, 201, 201]


async def test_limits_lost_by_redis_are_loaded_again_from_postgres(
    settings: Settings, engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    await _limit(engine, redis, tenant, 1)
    await redis.delete(keys.RATE_LIMITS_HASH)  # a Redis without persistence restarted
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=tenant.headers) as http:
            answers = [(await http.post(f"{BASE}/", json=BRIEF_EXAMPLE)).status_code for _ in range(2)]
    assert answers == [201, 429]
    assert await redis.hget(keys.RATE_LIMITS_HASH, keys.RATE_LIMITS_COMPLETE_FIELD) == b"1"


class _LateSecondWrite:
    """The test's Redis, except that its second HSET (a change's late write) waits until the other change either
    finished (`go`) or is blocked on the service row's lock: without the lock the late write lands last, with it
    the other change writes after it. No fixed wait: up to 30 s for either, however busy the machine.
    """

    def __init__(self, redis: Redis, engine: AsyncEngine) -> None:
        self._redis = redis
        self._engine = engine
        self.writes = 0
        self.waiting = asyncio.Event()
        self.go = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    async def _other_change_blocked(self) -> bool:
        async with self._engine.connect() as conn:
            blocked = await conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            return blocked.scalar_one() > 0

    async def hset(self, *args: Any, **kwargs: Any) -> Any:
        self.writes += 1
        if self.writes == 2:
            self.waiting.set()
            deadline = asyncio.get_running_loop().time() + 30
            while not (self.go.is_set() or await self._other_change_blocked()):
                assert asyncio.get_running_loop().time() < deadline, "the other change neither ended nor blocked"
                await asyncio.sleep(0.02)
        return await self._redis.hset(*args, **kwargs)


async def test_concurrent_changes_of_one_limit_leave_redis_as_postgres(
    engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    late = _LateSecondWrite(redis, engine)

    async def second_change() -> None:
        await late.waiting.wait()  # the first change has committed 10 and is about to write Redis again
        await _limit(engine, redis, tenant, 20)
        late.go.set()

    first = ratelimits.set_rate_limit(engine, cast(Redis, late), tenant.service_id, 10)
    await asyncio.gather(first, second_change())

    async with engine.connect() as conn:
        committed = (await conn.execute(text("SELECT rate_limit_per_minute FROM services WHERE id = :id"),
                                        {"id": tenant.service_id})).scalar_one()  # fmt: skip
    assert committed == 20
    assert await redis.hget(keys.RATE_LIMITS_HASH, str(tenant.service_id)) == b"20"


def test_the_cli_sets_a_limit(worker_env: dict[str, str], engine: object, redis: object) -> None:
    created = cli(worker_env, "services", "create", "limited-by-cli")
    service_id = re.search(r"id=(\S+)", created.stdout).group(1)  # type: ignore[union-attr]
    limited = cli(worker_env, "services", "rate-limit", service_id, "120")
    assert limited.returncode == 0, limited.stderr
    assert "rate_limit_per_minute=120" in limited.stdout
    assert "rate_limit_per_minute=None" in cli(worker_env, "services", "rate-limit", service_id, "default").stdout
    refused = cli(worker_env, "services", "rate-limit", service_id, "-3")
    assert refused.returncode == 2
    assert "invalid" in refused.stderr


async def test_a_list_that_cannot_fit_is_refused_before_it_is_validated_or_sent(
    client: httpx.AsyncClient, engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    await _limit(engine, redis, tenant, 10)
    assert (await client.post(f"{BASE}/multiple", json=_items(6))).status_code == 201  # 4 tokens left
    scripts = await command_calls(redis, "evalsha")
    assert scripts > 0  # the writes before went through Redis: the count is read where they ran

    refused = await client.post(f"{BASE}/multiple", json=[*_items(7), {"to": 5}])  # 8 items, one of them invalid

    assert refused.status_code == 429  # counted, not validated: it could not fit anyway
    assert "needs 8" in refused.json()["detail"]
    assert await command_calls(redis, "evalsha") == scripts  # no round trip
    assert (await client.post(f"{BASE}/multiple", json=_items(3))).status_code == 201  # what fits still goes


async def test_a_list_larger_than_the_limit_is_a_413_also_when_the_bucket_is_known_low(
    client: httpx.AsyncClient, engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    await _limit(engine, redis, tenant, 10)
    assert (await client.post(f"{BASE}/multiple", json=_items(8))).status_code == 201  # the bucket is known: 2 left

    answer = await client.post(f"{BASE}/multiple", json=_items(12))

    assert answer.status_code == 413  # never fits: not a 429 whose Retry-After would never come true


async def test_a_list_larger_than_the_limit_is_a_413_also_while_the_bucket_is_empty(
    client: httpx.AsyncClient, engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    await _limit(engine, redis, tenant, 10)
    assert (await client.post(f"{BASE}/multiple", json=_items(10))).status_code == 201  # the bucket is known empty

    too_large = await client.post(f"{BASE}/multiple", json=_items(12))
    fits_later = await client.post(f"{BASE}/multiple", json=_items(2))
    single = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE)

    assert too_large.status_code == 413, too_large.text  # as the README says: it never fits, whatever the bucket holds
    assert fits_later.status_code == 429
    assert single.status_code == 429


def test_what_redis_said_of_a_bucket_is_forgotten_once_expired_so_the_no_limited_service_shortcut_comes_back() -> None:
    limits = RateLimiter(cast(Any, None), cast(Any, None), 0, ttl_seconds=1.0)
    service = uuid4()
    handed_long_ago = time.monotonic() - 10  # what Redis said then is no longer to be trusted
    limits.note(RateState(True, 60, 30_000, 1_000, 60.0), service, handed_long_ago)

    assert limits.refused_before(service, 1) is None
    assert len(limits._known) == 0  # `if not self._known` skips every lookup again
