"""Idempotency-Key on the two POST routes: a retry gets the first answer again and queues nothing, in any process."""

import asyncio

import httpx
import orjson
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from api.main import create_app
from shared import keys
from shared.schemas import BRIEF_EXAMPLE, BRIEF_MULTIPLE_EXAMPLE
from shared.settings import Settings
from tests.conftest import (
    Tenant,
    count_rows,
    drain_all,
    impatient_client,
    keys_matching,
    make_tenant,
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
        await asyncio.sleep(0.6)  # the writer's PING finds Redis again
        retry = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE, headers=_keyed("after-503"))

    assert unconfirmed.status_code == 503
    assert "same Idempotency-Key is safe" in unconfirmed.json()["detail"]
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"  # Redis applied the first one after its pause
    assert retry.json()["id"] in unconfirmed.json()["detail"]
    assert await queued(redis, settings) == 2  # the warm-up request and the keyed one, once
