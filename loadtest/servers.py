"""Servers for the in-process benchmarks: DATABASE_URL / REDIS_URL when set, else embedded ones.

The servers' data is thrown away (tables truncated, Redis flushed), so point the variables at scratch servers.
"""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.db import upgrade_database
from shared.embedded import EmbeddedPostgres, EmbeddedRedis, free_port


@contextmanager
def bench_servers(appendfsync: str = "everysec") -> Iterator[tuple[str, str]]:
    """Yield (database URL, Redis URL) of migrated servers; embedded ones are stopped afterwards."""
    started: list[EmbeddedPostgres | EmbeddedRedis] = []
    database_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if not database_url:
                pg = EmbeddedPostgres(Path(tmp) / "pg", free_port()).start()
                started.append(pg)
                database_url = pg.url
            if not redis_url:
                redis = EmbeddedRedis(Path(tmp) / "redis", free_port(), appendfsync=appendfsync).start()
                started.append(redis)
                redis_url = redis.url
            upgrade_database(database_url)
            yield database_url, redis_url
        finally:
            for server in reversed(started):
                server.stop()
