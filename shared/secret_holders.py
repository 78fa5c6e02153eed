"""Which SECRET_KEY keys the live API processes hold, so that a key rotation never locks a service out.

Every API process with a SECRET_KEY reports its keys' fingerprints (the sealing key first) in
`keys.SECRET_HOLDERS_HASH` when it starts and every HEARTBEAT_SECONDS, and withdraws them when it stops; a report
counts for LIVE_SECONDS on Redis's clock. `keys reseal` refuses to seal with a key some live process cannot open,
and says when the old keys may be dropped. A process of an older version reports nothing: the check cannot see it.
"""

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable
from typing import cast

import orjson
from redis.asyncio import Redis

from shared import keys

logger = logging.getLogger(__name__)

#: How often a process reports its keys again.
HEARTBEAT_SECONDS = 10.0
#: How long a report counts: a process that stops reporting is taken for dead after this.
LIVE_SECONDS = 30.0


async def _redis_now(redis: Redis) -> float:
    seconds, micros = await cast(Awaitable[tuple[int, int]], redis.time())
    return seconds + micros / 1_000_000


async def report(redis: Redis, holder: str, fingerprints: list[str], live_seconds: float = LIVE_SECONDS) -> None:
    """Say that process `holder` holds the keys of `fingerprints` (the sealing one first), for `live_seconds`."""
    until = await _redis_now(redis) + live_seconds
    value = orjson.dumps({"keys": fingerprints, "until": until}).decode()
    await cast(Awaitable[int], redis.hset(keys.SECRET_HOLDERS_HASH, holder, value))


async def live_holders(redis: Redis) -> dict[str, list[str]]:
    """Return each live process's key fingerprints (the sealing one first); forget the reports that lapsed."""
    reports = await cast(Awaitable[dict[bytes, bytes]], redis.hgetall(keys.SECRET_HOLDERS_HASH))
    now = await _redis_now(redis)
    live: dict[str, list[str]] = {}
    lapsed: list[str] = []
    for holder, value in reports.items():
        held = orjson.loads(value)
        if held["until"] >= now:
            live[holder.decode()] = list(held["keys"])
        else:
            lapsed.append(holder.decode())
    if lapsed:
        await cast(Awaitable[int], redis.hdel(keys.SECRET_HOLDERS_HASH, *lapsed))
    return live


class SecretHolder:
    """This process's report: made at start, renewed every HEARTBEAT_SECONDS, withdrawn at stop."""

    def __init__(self, redis: Redis, fingerprints: list[str]) -> None:
        self.redis = redis
        self.fingerprints = fingerprints
        self.name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Report now (a Redis that cannot be reached is logged, not fatal), then keep reporting in the background."""
        await self._report()
        self._task = asyncio.create_task(self._heartbeat(), name="secret-holder")

    async def _report(self) -> None:
        try:
            await report(self.redis, self.name, self.fingerprints)
        except Exception as exc:  # reported again at the next beat; reseal cannot see this process meanwhile
            logger.warning("could not report this process's SECRET_KEY keys to Redis (%r)", exc)

    async def _heartbeat(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), HEARTBEAT_SECONDS)
            if not self._stopping.is_set():
                await self._report()

    async def stop(self) -> None:
        """Stop reporting and withdraw the report (if Redis cannot be reached, it lapses after LIVE_SECONDS)."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        with contextlib.suppress(Exception):
            await cast(Awaitable[int], self.redis.hdel(keys.SECRET_HOLDERS_HASH, self.name))
