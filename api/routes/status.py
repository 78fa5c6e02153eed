"""Liveness and readiness.

`GET /status/heartbeat` answers 204 without touching Redis or Postgres (is the process serving?).
`GET /status/ready` checks both stores and reports the backlog: 200 when Redis and Postgres answer, else 503.
Postgres's answer is kept POSTGRES_PROBE_CACHE_SECONDS, so that probes (unauthenticated) cost Postgres one
connection a second at most, however many arrive; the backlog is read from Redis on every call.
`GET /metrics` is the Prometheus exposition (see shared/metrics.py).
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request, Response
from sqlalchemy import text
from starlette.datastructures import State

from api.cache import TtlCache
from api.deps import EngineDep, RedisDep, WriterDep
from shared.backlog import read_backlog
from shared.metrics import render

router = APIRouter(prefix="/status", tags=["status"])
metrics_router = APIRouter()

#: How long each readiness probe may take before its store counts as down.
PROBE_TIMEOUT_SECONDS = 2.0
#: How long Postgres's answer to a readiness probe answers the probes after it.
POSTGRES_PROBE_CACHE_SECONDS = 1.0


@metrics_router.get("/metrics", response_class=Response, include_in_schema=False)
async def metrics() -> Response:
    """Prometheus metrics of the API."""
    body, content_type = render()
    return Response(body, media_type=content_type)


@router.get("/heartbeat", status_code=204, response_class=Response)
async def heartbeat() -> Response:
    """Answer 204 while the process serves requests."""
    return Response(status_code=204)


@router.get(
    "/ready",
    responses={
        200: {"description": "Redis and Postgres reachable", "content": {"application/json": {}}},
        503: {"description": "Redis or Postgres unreachable", "content": {"application/json": {}}},
    },
)
async def ready(
    request: Request,
    redis: RedisDep,
    engine: EngineDep,
    writer: WriterDep,
    postgres: Literal["required", "optional"] = "required",
) -> Response:
    """Report whether both stores answer, how many requests wait to be stored and the age of the oldest.

    With `?postgres=optional` only Redis decides (the API accepts notifications while Postgres is down): the
    probe to give a load balancer, so that a Postgres outage does not take every API instance out of service.
    `anonymous_service` names the service that requests without a key act as (ANONYMOUS_SERVICE), or is null.
    """
    settings = request.app.state.settings
    report: dict[str, Any] = {"redis": "ok", "postgres": "ok", "anonymous_service": settings.anonymous_service}

    async def probe_redis() -> None:
        backlog = await read_backlog(redis, writer.layout)
        report["backlog_entries"] = backlog.entries
        if len(backlog.by_shard) > 1:
            report["backlog_entries_by_shard"] = list(backlog.by_shard)
        report["oldest_pending_age_seconds"] = round(backlog.oldest_age_seconds, 3)
        report["dead_letters"] = backlog.dead_letters
        report["accepting"] = backlog.entries < writer.max_backlog

    async def probe_postgres() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(probe_redis(), PROBE_TIMEOUT_SECONDS)
    except Exception as exc:  # any failure means "not ready", and says why
        report["redis"] = f"unavailable: {type(exc).__name__}"
    report["postgres"] = await _postgres_answer(request.app.state, probe_postgres)
    ok = report["redis"] == "ok" and (report["postgres"] == "ok" or postgres == "optional")
    return Response(orjson.dumps(report), status_code=200 if ok else 503, media_type="application/json")


async def _postgres_answer(state: State, probe: Callable[[], Awaitable[None]]) -> str:
    """Return "ok" or why Postgres is unavailable, probed at most once per POSTGRES_PROBE_CACHE_SECONDS."""
    lock: asyncio.Lock | None = getattr(state, "postgres_probe_lock", None)
    if lock is None:
        state.postgres_probe_lock = lock = asyncio.Lock()
    cache: TtlCache[None, str] | None = getattr(state, "postgres_probe", None)
    if cache is None:
        state.postgres_probe = cache = TtlCache(POSTGRES_PROBE_CACHE_SECONDS, max_entries=1)
    async with lock:  # probes arriving meanwhile wait for this one's answer rather than each opening a connection
        known, answer = cache.get(None)
        if not known or answer is None:
            try:
                await asyncio.wait_for(probe(), PROBE_TIMEOUT_SECONDS)
                answer = "ok"
            except Exception as exc:  # any failure means "not ready", and says why
                answer = f"unavailable: {type(exc).__name__}"
            cache.put(None, answer)
    return answer
