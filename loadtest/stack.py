"""The servers and processes of a `make bench` run: the Stack, what it runs and sends, and what it reads back.

bench.py starts the embedded Postgres and Redis once per run; every measurement (bench.py's design runs,
sustained.py's rate search) then spawns its API and drain workers against them with `spawn`, after `reset`, and
reads the rows stored and their persistence lag from Postgres.
"""

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
from notifications_python_client.authentication import create_jwt_token
from redis.asyncio import Redis
from sqlalchemy import text

from shared import queries, tenancy
from shared.db import create_engine
from shared.secretbox import SecretBox

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: The designs compared, by their ASGI app (loadtest/baselines holds the two baselines).
DESIGNS = {
    "service": "api.main:app",
    "naive": "loadtest.baselines.naive:app",
    "direct": "loadtest.baselines.direct:app",
}
#: The write-behind designs, drained by our arq workers.
DRAINED = {"service", "naive"}
SINGLE = orjson.dumps({"to": "example@gmail.com", "personalization": {"band": "Incubus"}})
MULTIPLE = orjson.dumps([{"to": f"user{i}@example.com", "personalization": {"band": "Incubus"}} for i in range(100)])
#: Kinds of request: (path, body, notifications per request).
MODES = {
    "single": ("/notifications/v1/", SINGLE, 1),
    "multiple": ("/notifications/v1/multiple", MULTIPLE, 100),
    "single-keyed": ("/notifications/v1/", SINGLE, 1),
    # the body names the bench's email template (`v2_email_body`); signed with a Notify JWT (`notify_token`)
    "v2-email": ("/v2/notifications/email", b"", 1),
}
#: Modes whose every request carries its own Idempotency-Key (the service's feature: the baselines do not run them).
KEYED = {"single-keyed"}
#: GOV.UK Notify's send, with the template `make_tenant` makes (the baselines do not speak it).
V2_EMAIL = "v2-email"
#: Modes only the service runs, and that have no half-load lag run.
SERVICE_ONLY = KEYED | {V2_EMAIL}


@dataclass
class Stack:
    """The servers of one benchmark run."""

    database_url: str
    redis_url: str
    api_key: str
    service_id: str
    env: dict[str, str]
    server_pids: dict[str, int]
    #: The `bench` email template ("((band)) live" / "((band)) plays tonight."), for `v2-email`.
    template_id: str = ""


def v2_email_body(template_id: str) -> bytes:
    """The body of a `v2-email` request: the single POST's recipient and personalisation, with the template."""
    return orjson.dumps(
        {"email_address": "example@gmail.com", "template_id": template_id, "personalisation": {"band": "Incubus"}}
    )


def notify_token(api_key: str) -> str:
    """A GOV.UK Notify JWT of `api_key`, signed now: valid for 30 s, as long as a wrk run may last."""
    token: str = create_jwt_token(api_key[-36:], api_key[-73:-37])  # type: ignore[no-untyped-call]
    return token


def wait_port(port: int, timeout: float = 30.0) -> None:
    """Return once something listens on `port` of 127.0.0.1; raise RuntimeError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


async def sql(url: str, query: str, **params: Any) -> list[Any]:
    """Run one statement in its own transaction; return its rows (none for statements without)."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(query), params)
            return list(result) if result.returns_rows else []
    finally:
        await engine.dispose()


async def make_tenant(database_url: str, redis_url: str, secret_key: str) -> tuple[str, str]:
    """Create the `bench` service and an API key of it (its secret sealed with `secret_key`); return (id, key).

    The service also gets the `bench` email template (`template_of`).
    """
    engine = create_engine(database_url, pool_size=1)
    redis = Redis.from_url(redis_url)
    service = await tenancy.create_service(engine, "bench")
    key = await tenancy.create_api_key(engine, redis, SecretBox(secret_key), service.id, "bench")
    async with engine.begin() as conn:
        await queries.insert_template(
            conn, tenancy.new_id(), service.id, "bench", "((band)) live", "((band)) plays tonight.", tenancy.utc_now()
        )
    await redis.aclose()
    await engine.dispose()
    return str(service.id), key.secret


async def template_of(database_url: str, service_id: str) -> str:
    """Return the id of the `bench` template of the service."""
    return str((await sql(database_url, "SELECT id FROM templates WHERE service_id = :s", s=UUID(service_id)))[0][0])


async def reset(stack: Stack) -> None:
    """Empty the notification tables and Redis (the API reloads its keys into Redis when it starts)."""
    await sql(stack.database_url, "TRUNCATE notifications CASCADE")
    redis = Redis.from_url(stack.redis_url)
    await redis.flushdb()
    await redis.aclose()


async def count_rows(stack: Stack) -> int:
    """Return the number of notifications stored in Postgres."""
    return int((await sql(stack.database_url, "SELECT count(*) FROM notifications"))[0][0])


async def persistence_lag(stack: Stack) -> tuple[float, float]:
    """Return the persistence lag p50 and p99 in seconds: row committed (Postgres commit timestamp) - accepted."""
    row = (
        await sql(
            stack.database_url,
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), percentile_cont(0.99) WITHIN GROUP (ORDER BY lag)"
            " FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - created_at) AS lag"
            " FROM notifications) AS l",
        )
    )[0]
    return float(row[0] or 0), float(row[1] or 0)


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a process in the checkout's root, its output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate a process and wait for it (killed after 40 s)."""
    process.terminate()
    try:
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        process.kill()
