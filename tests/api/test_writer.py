"""The group-commit writer and the hot path's own error answer, against the real Redis."""

import asyncio
import re
import time

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from api import ingest
from api.errors import RedisUnresponsiveError, WriteOutcomeUnknownError
from api.flush import Written
from api.writer import RedisWriter
from shared import keys, redis_client
from shared.schemas import BRIEF_EXAMPLE
from shared.settings import Settings
from tests.helpers import Tenant, impatient_client, redis_asleep


async def test_a_cancelled_request_neither_cancels_the_shared_flush_nor_loses_its_write(redis: Redis) -> None:
    writer = RedisWriter(redis, max_backlog=1_000)
    writes = [asyncio.create_task(writer.write(b"[{}]", f"notify:r:test:{n}")) for n in range(20)]
    await asyncio.sleep(0)  # every request is queued and the flush has started
    writes[5].cancel()

    results = await asyncio.gather(*writes, return_exceptions=True)
    await writer.close()

    assert isinstance(results[5], asyncio.CancelledError)
    assert [r for n, r in enumerate(results) if n != 5] == [Written()] * 19  # queued, nothing found
    assert await redis.xlen(keys.STREAM) == 20  # the cancelled request's write went out with the others
    assert await redis.exists(*(f"notify:r:test:{n}" for n in range(20))) == 20


async def test_an_unexpected_error_on_the_hot_path_is_a_json_500(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ingest, "parse", broken)
    response = await client.post("/notifications/v1/", json=BRIEF_EXAMPLE)

    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
    assert "x-request-id" in response.headers
    assert "a bug" in caplog.text  # the traceback is logged


async def test_redis_out_of_memory_during_the_flush_script_is_a_503(client: httpx.AsyncClient, redis: Redis) -> None:
    await redis.config_set("maxmemory", "1")
    try:
        response = await client.post("/notifications/v1/", json=BRIEF_EXAMPLE)
    finally:
        await redis.config_set("maxmemory", "0")

    assert response.status_code == 503
    assert "retry-after" in response.headers
    assert await redis.xlen(keys.STREAM) == 0
    assert (await client.post("/notifications/v1/", json=BRIEF_EXAMPLE)).status_code == 201


async def test_more_writes_than_one_flush_carries_all_land(redis: Redis) -> None:
    writer = RedisWriter(redis, max_backlog=10_000, max_requests_per_flush=50)
    await asyncio.gather(*(writer.write(b"[{}]", f"notify:r:test:{n}", f"request-{n}") for n in range(600)))
    await writer.close()

    assert await redis.xlen(keys.STREAM) == 600
    assert await redis.exists(*(f"notify:r:test:{n}" for n in range(600))) == 600
    request_ids = {fields[keys.REQUEST_ID_FIELD] for _, fields in await redis.xrange(keys.STREAM)}
    assert request_ids == {f"request-{n}".encode() for n in range(600)}


async def test_a_write_arriving_as_both_flushes_finish_still_goes_out(redis: Redis) -> None:
    # Both flushes in flight get their answers in one loop iteration and end; a request that runs in that same
    # iteration, before the event loop has cleaned up after them, must still start a flush of its own.
    writer = RedisWriter(redis, max_backlog=1_000, max_flushes_in_flight=2)
    gate = asyncio.get_running_loop().create_future()
    real_flush = writer._flush

    at_gate = [asyncio.Event(), asyncio.Event()]  # set as the first and the second flush reach the gate
    flushes = 0

    async def answered_together(**kwargs: object) -> object:
        nonlocal flushes
        result = await real_flush(**kwargs)  # the real write, then wait to be released with the other flush
        flushes += 1
        if flushes <= len(at_gate):
            at_gate[flushes - 1].set()
        await gate
        return result

    writer._flush = answered_together  # type: ignore[assignment]
    first = asyncio.create_task(writer.write(b"[1]", "notify:r:test:1"))
    await asyncio.wait_for(at_gate[0].wait(), 30)  # the first flush is in flight: the second write is not in it
    second = asyncio.create_task(writer.write(b"[2]", "notify:r:test:2"))
    await asyncio.wait_for(at_gate[1].wait(), 30)  # two flushes in flight, both waiting at the gate

    async def late() -> None:
        await gate  # resumes right after the two flushers, in the same iteration
        await writer.write(b"[3]", "notify:r:test:3")

    third = asyncio.create_task(late())
    await asyncio.sleep(0)
    gate.set_result(None)

    await asyncio.wait_for(asyncio.gather(first, second, third), 30)
    await writer.close()
    assert await redis.xlen(keys.STREAM) == 3


async def test_a_redis_error_no_handler_maps_is_a_json_500_not_a_crash(client: httpx.AsyncClient, redis: Redis) -> None:
    await redis.set(keys.STREAM, "not a stream")  # XADD inside the flush script answers WRONGTYPE
    try:
        response = await client.post("/notifications/v1/", json=BRIEF_EXAMPLE)
    finally:
        await redis.delete(keys.STREAM)

    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
    assert "x-request-id" in response.headers


async def test_a_redis_that_stops_answering_fails_every_write_within_one_timeout_saying_what_is_known(
    redis: Redis, settings: Settings
) -> None:
    # One timeout is 1.5 s and Redis stalls 12 s: one timeout for all the writes ends within 6 s (4.5 s of slack),
    # one per flush would take 9 s or more even two at a time (12 flushes), all while Redis still does not answer.
    slow = redis_client.connect(settings.model_copy(update={"redis_timeout_seconds": 1.5}))
    # the stall's own client waits it out (the suite's `redis` gives up after 5 s)
    sleeper = redis_client.connect(settings.model_copy(update={"redis_timeout_seconds": 60}))
    writer = RedisWriter(slow, max_backlog=100_000, max_requests_per_flush=50)
    await writer.write(b"[{}]", "notify:r:test:warm")  # a connection in the pool
    async with redis_asleep(sleeper, 12):  # the reproduction: commands sent meanwhile run once it wakes
        started = time.monotonic()

        results = await asyncio.gather(
            *(writer.write(b"[{}]", f"notify:r:test:{n}") for n in range(600)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        # refused at once: the write raises without ever suspending (nothing sent, no wait on Redis)
        refusal = writer.write(b"[{}]", "notify:r:test:while-down")
        with pytest.raises(RedisUnresponsiveError):
            refusal.send(None)
    await sleeper.aclose()

    unknown = [n for n, result in enumerate(results) if isinstance(result, WriteOutcomeUnknownError)]
    not_queued = [n for n, result in enumerate(results) if isinstance(result, RedisUnresponsiveError)]
    assert len(unknown) + len(not_queued) == 600
    assert 1 <= len(unknown) <= 100  # the flushes that were sent (at most two of 50)
    assert elapsed < 6.0  # one timeout for all of them, not one per flush of 50 (12 flushes: 9 s or more)

    deadline = time.monotonic() + 60
    while True:  # the writer finds Redis answering again by itself
        try:
            await writer.write(b"[{}]", "notify:r:test:after")
            break
        except RedisUnresponsiveError:
            assert time.monotonic() < deadline, "the writer did not find Redis answering again within 60 s"
            await asyncio.sleep(0.1)
    await writer.close()
    await slow.aclose()

    # "unknown" was the truth: Redis applied the flushes it had been sent once the pause ended; "not queued" too
    assert await redis.exists(*(f"notify:r:test:{n}" for n in unknown)) == len(unknown)
    assert await redis.exists(*(f"notify:r:test:{n}" for n in not_queued), "notify:r:test:while-down") == 0
    assert await redis.exists("notify:r:test:after") == 1


async def test_a_post_whose_write_was_not_confirmed_names_the_id_that_tells_the_outcome(
    redis: Redis, settings: Settings, tenant: Tenant
) -> None:
    async with impatient_client(settings, tenant) as client:
        async with redis_asleep(redis, 1.5):
            response = await client.post("/notifications/v1/", json=BRIEF_EXAMPLE)
        notification_id = re.search(r"/notifications/v1/([0-9a-f-]{36})", response.json()["detail"])
        assert notification_id is not None
        found = await client.get(f"/notifications/v1/{notification_id[1]}")

    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()
    assert "may or may not have been queued" in response.json()["detail"]
    assert found.status_code == 200  # Redis applied it after the pause: a plain retry would have duplicated it


async def test_a_client_that_leaves_before_its_answer_is_counted_as_499_not_500(
    app: FastAPI, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    def count() -> float:
        labels = {"route": "/notifications/v1/", "method": "POST", "status": "499"}
        return REGISTRY.get_sample_value("notify_http_requests_total", labels) or 0.0

    before = count()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/notifications/v1/",
        "headers": [(b"authorization", f"Bearer {tenant.key}".encode()), (b"content-type", b"application/json")],
        "query_string": b"",
    }
    sent: list[object] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def send(message: object) -> None:
        sent.append(message)

    await app(scope, receive, send)

    assert sent == []
    assert count() == before + 1
    assert "POST http://localhost/notifications/v1/ 499" in caplog.text
