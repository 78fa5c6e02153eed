"""Servers for the in-process benchmarks: embedded ones of their own, or with a flag those the environment names.

A benchmark throws its servers' data away (tables truncated, Redis flushed). DATABASE_URL and REDIS_URL are what
the README tells users to set for their own servers, so a benchmark does not use them unless asked to with
`--use-configured-servers`; by default it starts an embedded PostgreSQL and Redis in a temporary folder, on free
ports, and stops them afterwards.
"""

import argparse
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack.embedded import EmbeddedPostgres, EmbeddedRedis
from shared.db import upgrade_database

CONFIGURED = ("DATABASE_URL", "REDIS_URL")


def add_servers_flag(parser: argparse.ArgumentParser) -> None:
    """Add `--use-configured-servers` to a benchmark's arguments."""
    parser.add_argument(
        "--use-configured-servers",
        action="store_true",
        help="run on the servers DATABASE_URL / REDIS_URL name (their notifications are TRUNCATED, the Redis "
        "database FLUSHED) instead of embedded servers of the benchmark's own",
    )


@contextmanager
def bench_servers(use_configured: bool = False, appendfsync: str = "everysec") -> Iterator[tuple[str, str]]:
    """Yield (database URL, Redis URL) of migrated servers whose data the benchmark may throw away.

    Embedded servers of our own (stopped afterwards), unless `use_configured`: then DATABASE_URL / REDIS_URL where
    set (an embedded server for the one not set).
    """
    configured = {name: os.environ.get(name) or None for name in CONFIGURED}
    if not use_configured:
        if any(configured.values()):
            ignored = " / ".join(name for name, url in configured.items() if url)
            print(
                f"{ignored} not used: the benchmark runs on servers of its own (--use-configured-servers)", flush=True
            )
        configured = dict.fromkeys(CONFIGURED)
    started: list[EmbeddedPostgres | EmbeddedRedis] = []
    database_url, redis_url = configured["DATABASE_URL"], configured["REDIS_URL"]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if not database_url:
                pg = EmbeddedPostgres(Path(tmp) / "pg").start()
                started.append(pg)
                database_url = pg.url
            if not redis_url:
                redis = EmbeddedRedis(Path(tmp) / "redis", appendfsync=appendfsync).start()
                started.append(redis)
                redis_url = redis.url
            upgrade_database(database_url)
            yield database_url, redis_url
        finally:
            for server in reversed(started):
                server.stop()
