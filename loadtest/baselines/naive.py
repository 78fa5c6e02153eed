"""Baseline (a): the naive write-behind — typed FastAPI body, one redis-py pipeline per request.

Two commands per notification (SET of a cache key, XADD of a one-notification entry); our worker drains the
stream.

    BENCH_API_KEY=... REDIS_URL=... uvicorn loadtest.baselines.naive:app
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import Depends, FastAPI
from redis.asyncio import Redis

from loadtest.baselines.common import check_key, new_notification
from shared import keys
from shared.schemas import NotificationIn, NotificationOut


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open and close the Redis client."""
    app.state.redis = Redis.from_url(os.environ["REDIS_URL"])
    yield
    await app.state.redis.aclose()


app = FastAPI(lifespan=lifespan)


async def _store(redis: Redis, notifications: list[dict[str, Any]]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for notification in notifications:
            document = orjson.dumps(notification)
            pipe.set(keys.cache_key(notification["service_id"], notification["id"]), document)
            pipe.xadd(keys.STREAM, {keys.STREAM_FIELD: b"[" + document + b"]"})
        await pipe.execute()


@app.post("/notifications/v1/", status_code=201, response_model=NotificationOut)
async def create(item: NotificationIn, service: str = Depends(check_key)) -> dict[str, Any]:
    """Accept one notification."""
    notification = new_notification(item)
    await _store(app.state.redis, [notification])
    return notification


@app.post("/notifications/v1/multiple", status_code=201, response_model=list[NotificationOut])
async def create_many(items: list[NotificationIn], service: str = Depends(check_key)) -> list[dict[str, Any]]:
    """Accept a list of notifications."""
    notifications = [new_notification(item) for item in items]
    await _store(app.state.redis, notifications)
    return notifications
