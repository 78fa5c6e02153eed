"""The group-commit writer and the hot path's own error answer, against the real Redis."""

import asyncio

import httpx
import pytest
from redis.asyncio import Redis

from api.routes import notifications
from api.writer import RedisWriter
from shared import keys
from shared.schemas import BRIEF_EXAMPLE


async def test_a_cancelled_request_neither_cancels_the_shared_flush_nor_loses_its_write(redis: Redis) -> None:
    writer = RedisWriter(redis, max_backlog=1_000)
    writes = [asyncio.create_task(writer.write(b"[{}]", f"notify:r:test:{n}")) for n in range(20)]
    await asyncio.sleep(0)  # every request is queued and the flush has started
    writes[5].cancel()

    results = await asyncio.gather(*writes, return_exceptions=True)
    await writer.close()

    assert isinstance(results[5], asyncio.CancelledError)
    assert [r for n, r in enumerate(results) if n != 5] == [None] * 19
    assert await redis.xlen(keys.STREAM) == 20  # the cancelled request's write went out with the others
    assert await redis.exists(*(f"notify:r:test:{n}" for n in range(20))) == 20


async def test_an_unexpected_error_on_the_hot_path_is_a_json_500(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(notifications, "_ingest", broken)
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

    async def answered_together(**kwargs: object) -> object:
        result = await real_flush(**kwargs)  # the real write, then wait to be released with the other flush
        await gate
        return result

    writer._flush = answered_together  # type: ignore[assignment]
    first = asyncio.create_task(writer.write(b"[1]", "notify:r:test:1"))
    await asyncio.sleep(0.1)
    second = asyncio.create_task(writer.write(b"[2]", "notify:r:test:2"))
    await asyncio.sleep(0.1)  # two flushes in flight, both waiting at the gate

    async def late() -> None:
        await gate  # resumes right after the two flushers, in the same iteration
        await writer.write(b"[3]", "notify:r:test:3")

    third = asyncio.create_task(late())
    await asyncio.sleep(0)
    gate.set_result(None)

    await asyncio.wait_for(asyncio.gather(first, second, third), 5)
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
