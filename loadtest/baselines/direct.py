"""Baseline (b): the direct design — each POST inserts into Postgres (asyncpg pool) before answering.

BENCH_API_KEY=... DATABASE_URL=... uvicorn loadtest.baselines.direct:app
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from fastapi import Depends, FastAPI

from loadtest.baselines.common import check_key, new_notification
from shared.schemas import NotificationIn, NotificationOut

INSERT_NOTIFICATION = (
    'INSERT INTO notifications (id, service_id, "to", personalization, created_at, updated_at, sent_at) '
    "VALUES ($1, $2, $3, $4, $5, $6, $7)"
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open and close the connection pool."""
    app.state.pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=10, max_size=10)
    yield
    await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


async def _insert(notifications: list[dict[str, Any]]) -> None:
    rows = [
        (n["id"], n["service_id"], n["to"], orjson.dumps(n["personalization"]).decode(), n["created_at"],
         n["updated_at"], n["sent_at"])
        for n in notifications
    ]  # fmt: skip
    async with app.state.pool.acquire() as conn, conn.transaction():
        await conn.executemany(INSERT_NOTIFICATION, rows)


@app.post("/notifications/v1/", status_code=201, response_model=NotificationOut)
async def create(item: NotificationIn, service: str = Depends(check_key)) -> dict[str, Any]:
    """Accept one notification: stored before the answer."""
    notification = new_notification(item)
    await _insert([notification])
    return notification


@app.post("/notifications/v1/multiple", status_code=201, response_model=list[NotificationOut])
async def create_many(items: list[NotificationIn], service: str = Depends(check_key)) -> list[dict[str, Any]]:
    """Accept a list of notifications: stored before the answer."""
    notifications = [new_notification(item) for item in items]
    await _insert(notifications)
    return notifications
