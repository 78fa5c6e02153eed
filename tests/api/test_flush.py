"""The FLUSH script's protocol on a real Redis: the script reads what `pack` sends, `parse` reads what it answers."""

from typing import Any, cast

from redis.asyncio import Redis

from api.flush import FLUSH, Idempotency, RateLimit, Write, Written, pack, parse
from shared import keys


async def test_one_call_queues_replays_and_refuses_each_write_as_its_arguments_say(redis: Redis) -> None:
    shard = keys.layout().shards[0]
    record_key = shard.idempotency_key("service", "retry-1")
    await redis.set(record_key, b"the first request's record")
    bucket = shard.bucket_key("limited")
    batch = [
        Write(b'[{"n":1}]', shard.request_key("service", "a"), "request-a", None, None),
        Write(b'[{"n":2}]', shard.request_key("service", "b"), "request-b", Idempotency(record_key, b"new", 60), None),
        Write(b'[{"n":3}]', shard.request_key("limited", "c"), "request-c", None, RateLimit(bucket, 10, 4, 10.0)),
        Write(b'[{"n":4}]', shard.request_key("limited", "d"), "request-d", None, RateLimit(bucket, 10, 7, 10.0)),
        Write(
            b'[{"n":5}]',
            shard.request_key("service", "e"),
            "request-e",
            Idempotency(shard.idempotency_key("service", "new"), b"kept", 60),
            None,
        ),
    ]

    keys_, args = pack(shard.stream, batch)
    reply = cast(list[Any], await redis.register_script(FLUSH)(keys=keys_, args=args))
    length, outcomes = parse(batch, reply)

    assert length == 3  # a, c and e were queued
    queued, replayed, allowed, refused, recorded = outcomes
    assert queued == recorded == Written()
    assert replayed == Written(b"the first request's record")
    assert allowed.rate is not None
    assert refused.rate is not None
    assert (allowed.rate.allowed, allowed.rate.remaining, allowed.rate.limit) == (True, 6, 10)
    assert (refused.rate.allowed, refused.rate.remaining) == (False, 6)  # 7 asked, 6 left: nothing taken
    assert [outcome.queued for outcome in outcomes] == [True, False, True, False, True]
    entries = await redis.xrange(shard.stream)
    assert [fields[keys.REQUEST_ID_FIELD] for _, fields in entries] == [b"request-a", b"request-c", b"request-e"]
    assert await redis.get(shard.request_key("service", "a")) == b'[{"n":1}]'
    assert not await redis.exists(shard.request_key("service", "b"), shard.request_key("limited", "d"))
    assert await redis.get(record_key) == b"the first request's record"  # a replay leaves the record as it was
    assert await redis.get(shard.idempotency_key("service", "new")) == b"kept"
    assert 0 < await redis.ttl(shard.idempotency_key("service", "new")) <= 60


async def test_a_batch_of_plain_writes_gets_the_short_reply(redis: Redis) -> None:
    shard = keys.layout().shards[0]
    batch = [Write(b"[]", shard.request_key("service", str(n)), "", None, None) for n in range(3)]

    keys_, args = pack(shard.stream, batch)
    reply = cast(list[Any], await redis.register_script(FLUSH)(keys=keys_, args=args))

    assert reply == [3, 0]
    assert parse(batch, reply) == (3, [Written()] * 3)
