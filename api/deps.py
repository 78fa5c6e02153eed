"""FastAPI dependencies as `Annotated` aliases, so handlers read `redis: RedisDep`.

The objects themselves are opened and closed by the lifespan in `api.main` and kept on `app.state`.
"""

from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from api.writer import RedisWriter
from shared.settings import Settings


async def get_redis(request: Request) -> Redis:
    """Return the app's Redis client (async: FastAPI would run a plain function in a thread)."""
    redis: Redis = request.app.state.redis
    return redis


async def get_engine(request: Request) -> AsyncEngine:
    """Return the app's database engine."""
    engine: AsyncEngine = request.app.state.engine
    return engine


async def get_writer(request: Request) -> RedisWriter:
    """Return the app's group-commit Redis writer."""
    writer: RedisWriter = request.app.state.writer
    return writer


async def get_settings_of_app(request: Request) -> Settings:
    """Return the settings the app runs with."""
    settings: Settings = request.app.state.settings
    return settings


RedisDep = Annotated[Redis, Depends(get_redis)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
WriterDep = Annotated[RedisWriter, Depends(get_writer)]
SettingsDep = Annotated[Settings, Depends(get_settings_of_app)]
