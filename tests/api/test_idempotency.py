"""Idempotency-Key on the two POST routes: a retry gets the first answer again and queues nothing, in any process."""

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import orjson
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.main import create_app
from shared import keys
from shared.schemas import BRIEF_EXAMPLE, BRIEF_MULTIPLE_EXAMPLE
from shared.settings import Settings
from tests.helpers import (
    Tenant,
    cache_keys,
    count_rows,
    drain_all,
    impatient_client,
    keys_matching,
    make_tenant,
    notify_headers,
    notify_key,
    queued,
    redis_asleep,
)
from worker.drain import Drain

BASE = "/notifications/v1"


def _keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


@pytest.mark.parametrize(("path", "body"), [("/", BRIEF_EXAMPLE), ("/multiple", BRIEF_MULTIPLE_EXAMPLE)])
async def test_a_retry_with_the_same_key_and_body_gets_the_first_answer_and_queues_nothing(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, path: str, body: object
) -> None:
    first = await client.post(f"{BASE}{path}", json=body, headers=_keyed("order-1"))
    waiting = await queued(redis, settings)
    again = await client.post(f"{BASE}{path}", json=body, headers=_keyed("order-1"))

    assert first.status_code == again.status_code == 201
    assert again.content == first.content  # same ids, same timestamps, same bytes
    assert again.headers.get("location") == first.headers.get("location")
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await queued(redis, settings) == waiting == 1
    replayed = orjson.loads(again.content)
    some_id = replayed["id"] if path == "/" else replayed[-1]["id"]
    assert (await client.get(f"{BASE}/{some_id}")).status_code == 200


async def test_the_same_key_with_another_body_is_a_422_naming_the_key(
    client: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    first = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=_keyed("order-2"))
    other = await client.post(f"{BASE}/", json={**BRIEF_EXAMPLE, "to": "other@example.com"}, headers=_keyed("order-2"))
    other_route = await client.post(f"{BASE}/multiple", json=[BRIEF_EXAMPLE], headers=_keyed("order-2"))

    assert first.status_code == 201
    assert other.status_code == other_route.status_code == 422
    assert "order-2" in other.json()["detail"]
    assert await queued(redis, settings) == 1


@pytest.mark.parametrize("key", ["k" * 256, "clé", "tab\there", ""])
async def test_a_key_too_long_empty_or_not_printable_ascii_is_a_400(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, key: str
) -> None:
    response = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers={"Idempotency-Key": key.encode()})

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]
    assert await queued(redis, settings) == 0


async def test_a_key_of_255_characters_and_its_quoted_form_are_one_key(client: httpx.AsyncClient) -> None:
    key = "k" * 255
    first = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=_keyed(key))
    quoted = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=_keyed(f'"{key}"'))

    assert first.status_code == quoted.status_code == 201
    assert quoted.content == first.content


async def test_two_services_use_the_same_key_independently(
    client: httpx.AsyncClient, app: FastAPI, engine: AsyncEngine, redis: Redis, settings: Settings
) -> None:
    other = await make_tenant(engine, redis, "tenant-b")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=other.headers) as other_client:
        theirs = await other_client.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=_keyed("shared-key"))
    ours = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=_keyed("shared-key"))

    assert theirs.status_code == ours.status_code == 201
    assert "idempotent-replayed" not in ours.headers
    assert ours.json()["id"] != theirs.json()["id"]
    assert await queued(redis, settings) == 2


async def test_concurrent_duplicates_queue_one_and_the_others_are_replayed_or_409(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, engine: AsyncEngine, drain: Drain
) -> None:
    responses = await asyncio.gather(
        *(client.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=_keyed("burst")) for _ in range(20))
    )

    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {201, 409}
    firsts = [r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers]
    assert len(firsts) == 1
    assert {r.json()["id"] for r in responses if r.status_code == 201} == {firsts[0].json()["id"]}
    assert all("in progress" in r.json()["detail"] for r in responses if r.status_code == 409)
    assert await queued(redis, settings) == 1
    assert await drain_all(drain) == 1
    assert await count_rows(engine) == 1


async def test_a_key_sent_to_two_api_processes_is_queued_once(
    client: httpx.AsyncClient, settings: Settings, tenant: Tenant, redis: Redis, engine: AsyncEngine, drain: Drain
) -> None:
    second = create_app(settings)  # its own writer, its own in-flight keys: only Redis knows both
    async with second.router.lifespan_context(second):
        transport = httpx.ASGITransport(app=second)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=tenant.headers) as other:
            responses = await asyncio.gather(
                *(
                    http.post(f"{BASE}/multiple", json=BRIEF_MULTIPLE_EXAMPLE, headers=_keyed("two-processes"))
                    for _ in range(5)
                    for http in (client, other)
                )
            )

    accepted = [r for r in responses if r.status_code == 201]
    assert {r.status_code for r in responses} <= {201, 409}
    assert len([r for r in accepted if "idempotent-replayed" not in r.headers]) == 1
    assert len({r.content for r in accepted}) == 1
    assert await queued(redis, settings) == 1
    assert await drain_all(drain) == len(BRIEF_MULTIPLE_EXAMPLE)
    assert await count_rows(engine) == len(BRIEF_MULTIPLE_EXAMPLE)


async def test_requests_without_a_key_are_each_queued(
    client: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    for _ in range(3):
        assert (await client.post(f"{BASE}/", json=BRIEF_EXAMPLE)).status_code == 201

    assert await queued(redis, settings) == 3
    assert await keys_matching(redis, "*:idem:*") == []  # no idempotency record, in any shard


async def test_the_record_expires_after_idempotency_ttl_seconds(
    client: httpx.AsyncClient, redis: Redis, tenant: Tenant, settings: Settings
) -> None:
    await client.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=_keyed("ttl"))

    layout = keys.layout_for(settings)
    shard = layout.shards[layout.shard_for_idempotency_key(str(tenant.service_id), "ttl")]
    ttl = await redis.ttl(shard.idempotency_key(str(tenant.service_id), "ttl"))
    assert settings.idempotency_ttl_seconds - 5 <= ttl <= settings.idempotency_ttl_seconds


async def test_a_retry_after_an_unconfirmed_write_finds_it_rather_than_queueing_it_again(
    redis: Redis, settings: Settings, tenant: Tenant
) -> None:
    async with impatient_client(settings, tenant) as client:
        async with redis_asleep(redis, 1.5):
            unconfirmed = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=_keyed("after-503"))

        async def retried() -> httpx.Response:  # as a client would: a 503 says a retry with the key is safe
            for _ in range(600):
                answer = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=_keyed("after-503"))
                if answer.status_code != 503:
                    break
                await asyncio.sleep(0.1)  # the writer's probe has not found Redis again yet
            return answer

        retry = await retried()

    assert unconfirmed.status_code == 503
    assert "same Idempotency-Key is safe" in unconfirmed.json()["detail"]
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"  # Redis applied the first one after its pause
    assert retry.json()["id"] in unconfirmed.json()["detail"]
    assert await queued(redis, settings) == 2  # the warm-up request and the keyed one, once


# Keys in an order `jsonb` does not keep (it sorts them by length, then bytewise): the replay rebuilt from Postgres
# must still be the first answer's bytes.
PERSONALIZED: dict[str, object] = {
    "to": "ann@example.com",
    "personalization": {"name": "Ann", "é": "e", "ab": "x", "B": "b", "zz": "z", "a": "1"},
}
EMAIL_TEMPLATE = {"name": "welcome", "subject": "Hi ((name))", "body": "Hello ((name)), your code is ((code))."}
SMS_TEMPLATE = {"name": "code", "type": "sms", "body": "Your code is ((code))"}


def _record_key(settings: Settings, tenant: Tenant, key: str) -> str:
    layout = keys.layout_for(settings)
    return layout.shards[layout.shard_for_idempotency_key(str(tenant.service_id), key)].idempotency_key(
        str(tenant.service_id), key
    )


async def _stored_only(redis: Redis, settings: Settings, drain: Drain) -> None:
    """Store everything queued with the real drain, then drop the requests' cache keys as CACHE_TTL_SECONDS would."""
    await drain_all(drain)
    assert await queued(redis, settings) == 0
    for key in await cache_keys(redis, settings):
        await redis.delete(key)


async def _forgotten(redis: Redis, settings: Settings, engine: AsyncEngine, drain: Drain) -> None:
    """Store everything, then lose it from Redis and Postgres, as retention would (the records stay)."""
    await _stored_only(redis, settings, drain)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM notifications"))


async def _replays(send: Callable[[], Awaitable[httpx.Response]], first: httpx.Response) -> None:
    again = await send()
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content  # the same ids, fields, order and personalization order: the same bytes
    assert again.headers.get("location") == first.headers.get("location")


@pytest.mark.parametrize(
    ("path", "body"), [("/", PERSONALIZED), ("/multiple", [PERSONALIZED, *BRIEF_MULTIPLE_EXAMPLE, PERSONALIZED])]
)
async def test_a_replay_is_the_first_answer_while_queued_cached_and_stored(
    client: httpx.AsyncClient,
    redis: Redis,
    settings: Settings,
    engine: AsyncEngine,
    drain: Drain,
    path: str,
    body: object,
) -> None:
    async def send() -> httpx.Response:
        return await client.post(f"{BASE}{path}", json=body, headers=_keyed("across-the-drain"))

    first = await send()
    assert first.status_code == 201

    await _replays(send, first)  # queued: from the request's cache key
    assert await drain_all(drain) == (1 if path == "/" else 4)
    await _replays(send, first)  # stored, its cache key not yet expired
    await _stored_only(redis, settings, drain)
    await _replays(send, first)  # from Postgres only
    assert await queued(redis, settings) == 0
    assert await count_rows(engine) == (1 if path == "/" else 4)


@pytest.mark.parametrize("channel", ["email", "sms"])
async def test_a_v2_replay_is_the_first_answer_while_queued_and_stored(
    client: httpx.AsyncClient,
    tenant: Tenant,
    redis: Redis,
    settings: Settings,
    engine: AsyncEngine,
    drain: Drain,
    channel: str,
) -> None:
    template = await client.post("/templates/v1/", json=EMAIL_TEMPLATE if channel == "email" else SMS_TEMPLATE)
    to = {"email_address": "ann@example.com"} if channel == "email" else {"phone_number": "07700900123"}
    body = {
        **to,
        "template_id": template.json()["id"],
        "personalisation": {"name": "Ann", "code": "1234", "b": "x", "aa": "y"},
        "reference": "order-1",
    }

    async def send() -> httpx.Response:
        headers = {**notify_headers(notify_key(tenant)), "Idempotency-Key": "v2-across-the-drain"}
        return await client.post(f"/v2/notifications/{channel}", json=body, headers=headers)

    first = await send()
    assert first.status_code == 201, first.text

    await _replays(send, first)
    await _stored_only(redis, settings, drain)
    await _replays(send, first)
    assert await count_rows(engine) == 1


async def test_a_keyed_multiple_keeps_tens_of_bytes_per_notification_for_the_day(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: Tenant
) -> None:
    count = settings.max_batch_items
    body = [
        {"to": f"user-{n}@example.com", "personalization": {"name": f"User {n}", "band": "Korn"}} for n in range(count)
    ]
    first = await client.post(f"{BASE}/multiple", json=body, headers=_keyed("a-big-one"))
    assert first.status_code == 201
    assert len(first.content) > 100 * count  # the answer itself is larger than what may be kept for it

    usage = await redis.memory_usage(_record_key(settings, tenant, "a-big-one"))
    assert usage is not None
    assert usage < 100 * count


async def test_a_record_of_the_old_format_still_replays_its_answer(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, engine: AsyncEngine, tenant: Tenant, drain: Drain
) -> None:
    first = await client.post(f"{BASE}/", json=PERSONALIZED, headers=_keyed("from-before"))
    record_key = _record_key(settings, tenant, "from-before")
    record = await redis.get(record_key)
    assert record is not None
    # what deployments kept before: the fingerprint, then the whole answer (nothing else has the notification now)
    await redis.set(record_key, record[:64] + first.content, keepttl=True)
    await _forgotten(redis, settings, engine, drain)

    again = await client.post(f"{BASE}/", json=PERSONALIZED, headers=_keyed("from-before"))

    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"]


async def test_a_replay_whose_notifications_are_gone_is_a_410_and_queues_nothing(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, engine: AsyncEngine, drain: Drain
) -> None:
    first = await client.post(f"{BASE}/multiple", json=BRIEF_MULTIPLE_EXAMPLE, headers=_keyed("long-ago"))
    await _forgotten(redis, settings, engine, drain)

    again = await client.post(f"{BASE}/multiple", json=BRIEF_MULTIPLE_EXAMPLE, headers=_keyed("long-ago"))
    other_body = await client.post(f"{BASE}/multiple", json=[BRIEF_EXAMPLE], headers=_keyed("long-ago"))

    assert again.status_code == 410
    detail = again.json()["detail"]
    assert "long-ago" in detail
    assert first.json()[0]["id"] in detail
    assert "no longer kept" in detail
    assert other_body.status_code == 422  # another body is still told apart
    assert await queued(redis, settings) == 0
    assert await count_rows(engine) == 0


async def test_a_v2_replay_whose_notification_is_gone_is_notifys_410(
    client: httpx.AsyncClient, tenant: Tenant, redis: Redis, settings: Settings, engine: AsyncEngine, drain: Drain
) -> None:
    template = await client.post("/templates/v1/", json=SMS_TEMPLATE)
    body = {"phone_number": "07700900123", "template_id": template.json()["id"], "personalisation": {"code": "1"}}

    async def send() -> httpx.Response:
        headers = {**notify_headers(notify_key(tenant)), "Idempotency-Key": "v2-long-ago"}
        return await client.post("/v2/notifications/sms", json=body, headers=headers)

    first = await send()
    assert first.status_code == 201
    await _forgotten(redis, settings, engine, drain)

    again = await send()

    assert again.status_code == 410
    errors = again.json()
    assert errors["status_code"] == 410
    assert errors["errors"][0]["error"] == "IdempotentAnswerGoneError"
    assert first.json()["id"] in errors["errors"][0]["message"]
    assert await queued(redis, settings) == 0
