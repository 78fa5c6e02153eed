"""The FastAPI application: `uvicorn api.main:app`.

`create_app` builds the app without touching the environment; the lifespan reads the settings and opens (and
finally closes) the Redis client, the group-commit writer and the database engine.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

from fastapi import FastAPI
from starlette.types import ASGIApp

from api.cache import TtlCache
from api.govuk.auth import NotifyKeyCache, NotifyTokenCache
from api.handlers import install_error_handlers
from api.middleware.access_log import AccessLogMiddleware
from api.middleware.body import BodyLimitMiddleware
from api.middleware.hotpath import HotPathMiddleware
from api.rate_limiter import RateLimiter
from api.routes import jobs, notifications, notify_bulk, notify_v2, services, status, templates
from api.template_cache import TemplateCache
from api.writer import RedisWriter
from shared import keys, redis_client
from shared.db import create_engine
from shared.heap import freeze_startup_objects
from shared.logs import configure_logging
from shared.secret_holders import SecretHolder
from shared.secretbox import secret_box
from shared.settings import Settings, get_settings

logger = logging.getLogger(__name__)

DESCRIPTION = """Write-behind notification ingestion: every accepted notification is in Redis when the 201 is sent,
and arq workers drain it into Postgres in large batches. GET finds a notification in either place."""


class NotifyAPI(FastAPI):
    """FastAPI with the request log, the body limit and the hot path outside Starlette's middleware stack.

    Every request passes the access log (request id, counter, log line) and the body limit first; the hot path
    then serves the notification routes itself, and everything else goes through FastAPI's usual stack. So a
    middleware added with `app.add_middleware` (CORS, GZip, tracing) does not see the three notification routes:
    add it here, outside the hot path, if it must.
    """

    def build_middleware_stack(self) -> ASGIApp:
        """Wrap FastAPI's stack (built on first request) in ours."""
        return AccessLogMiddleware(BodyLimitMiddleware(HotPathMiddleware(super().build_middleware_stack(), self)))


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; `settings` defaults to the environment's, read when the app starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = active = settings or get_settings()
        configure_logging(active.log_level, active.log_format)
        logging.getLogger("api.access").setLevel(logging.INFO if active.access_log else logging.WARNING)
        app.state.redis = redis = redis_client.connect(active)
        app.state.writer = writer = RedisWriter(
            redis,
            active.max_backlog_entries,
            layout=keys.layout_for(active),
            wait_replicas=active.redis_wait_replicas,
            timeout_seconds=active.redis_timeout_seconds,
        )
        app.state.engine = engine = create_engine(active.require_database_url(), active.db_pool_size)
        app.state.key_cache = TtlCache[str, UUID | None](active.auth_cache_seconds)
        app.state.notify_keys = NotifyKeyCache(active.auth_cache_seconds)
        app.state.notify_tokens = NotifyTokenCache(active.auth_cache_seconds)
        app.state.secret_box = box = secret_box(active.secret_key)
        holder = None
        if box is None:
            logger.warning("SECRET_KEY is not set: no API key can be issued, no GOV.UK Notify token verified")
        else:  # which keys this process holds, for `keys reseal` to check (shared.secret_holders)
            holder = SecretHolder(redis, box.fingerprints)
            await holder.start()
        app.state.templates = TemplateCache(engine, active.template_cache_seconds)
        app.state.rate_limits = RateLimiter(engine, redis, active.rate_limit_per_minute, active.auth_cache_seconds)
        freeze_startup_objects()
        try:
            yield
        finally:
            if holder is not None:
                await holder.stop()
            await writer.close()
            await redis.aclose()
            await engine.dispose()

    app = NotifyAPI(
        title="Notification ingestion",
        version="1.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry layer, unused here (metrics are Prometheus's): off, it costs nothing per request
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    install_error_handlers(app)
    app.include_router(jobs.router)  # before notifications: its GET /notifications/v1/{id} would take `jobs`
    app.include_router(notifications.router)
    app.include_router(templates.router)
    app.include_router(notify_bulk.router)  # before notify_v2: its GET /v2/notifications/{id} would take `bulk`
    app.include_router(notify_v2.router)
    app.include_router(services.router)
    app.include_router(status.router)
    app.include_router(status.metrics_router)
    return app


app = create_app()
