"""Readiness: what it reports, and what each probe costs Postgres."""

import asyncio
import math
import time
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import event

from api.routes.status import POSTGRES_PROBE_CACHE_SECONDS


async def test_ready_opens_postgres_at_most_once_a_second(app: FastAPI, anonymous: httpx.AsyncClient) -> None:
    checkouts = 0

    def count(*_: Any) -> None:
        nonlocal checkouts
        checkouts += 1

    engine = app.state.engine.sync_engine
    event.listen(engine, "checkout", count)
    try:
        started = time.monotonic()
        answers = []
        for _ in range(5):  # one after the other, and many at once
            answers.append(await anonymous.get("/status/ready"))
            answers.extend(await asyncio.gather(*[anonymous.get("/status/ready") for _ in range(20)]))
        elapsed = time.monotonic() - started
    finally:
        event.remove(engine, "checkout", count)

    assert {answer.status_code for answer in answers} == {200}
    assert {answer.json()["postgres"] for answer in answers} == {"ok"}
    assert 1 <= checkouts <= math.ceil(elapsed / POSTGRES_PROBE_CACHE_SECONDS) + 1  # 105 probes, not 105 connections
