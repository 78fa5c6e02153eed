"""FastAPI dependencies as `Annotated` aliases, so handlers read `redis: RedisDep`.

The objects themselves are opened and closed by the lifespan in `api.main` and kept on `app.state`.
"""

from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from api.template_cache import TemplateCache
from api.writer import RedisWriter
from shared.settings import Settings


def get_redis(request: Request) -> Redis:
    """Return the app's Redis client."""
    redis: Redis = request.app.state.redis
    return redis


def get_engine(request: Request) -> AsyncEngine:
    """Return the app's database engine."""
    engine: AsyncEngine = request.app.state.engine
    return engine


def get_writer(request: Request) -> RedisWriter:
    """Return the app's group-commit Redis writer."""
    writer: RedisWriter = request.app.state.writer
    return writer


def get_templates(request: Request) -> TemplateCache:
    """Return the app's template-version cache."""
    templates: TemplateCache = request.app.state.templates
    return templates


def get_app_settings(request: Request) -> Settings:
    """Return the settings the app was started with."""
    settings: Settings = request.app.state.settings
    return settings


RedisDep = Annotated[Redis, Depends(get_redis)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
WriterDep = Annotated[RedisWriter, Depends(get_writer)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
TemplatesDep = Annotated[TemplateCache, Depends(get_templates)]
