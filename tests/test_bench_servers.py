"""The in-process benchmarks throw their servers' data away: never that of the servers DATABASE_URL/REDIS_URL name."""

import pytest
import redis

from loadtest.servers import bench_servers
from tests.helpers import Servers


def test_benchmarks_leave_the_configured_servers_alone(servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", servers.database_url)
    monkeypatch.setenv("REDIS_URL", servers.redis_url)
    users = redis.Redis.from_url(servers.redis_url)
    users.set("bench-test:users-data", "keep")
    try:
        with bench_servers() as (database_url, redis_url):
            assert database_url != servers.database_url
            assert redis_url != servers.redis_url
            scratch = redis.Redis.from_url(redis_url)
            scratch.flushdb()  # what a benchmark does to its servers
            scratch.close()
        assert users.get("bench-test:users-data") == b"keep"
    finally:
        users.delete("bench-test:users-data")
        users.close()


def test_benchmarks_run_on_the_configured_servers_when_asked(servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", servers.database_url)
    monkeypatch.setenv("REDIS_URL", servers.redis_url)
    with bench_servers(use_configured=True) as urls:
        assert urls == (servers.database_url, servers.redis_url)
