"""SIGTERM to a real uvicorn server under load: in-flight requests finish, and every 201 is in Redis."""

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import httpx
import orjson
from redis.asyncio import Redis

from devstack.embedded import free_port
from shared import keys
from tests.helpers import ROOT, Tenant, wait_for


async def test_sigterm_finishes_in_flight_requests_and_loses_no_201(
    worker_env: dict[str, str], venv_bin: Path, tenant: Tenant, redis: Redis, tmp_path: Path
) -> None:
    port = free_port()
    log = (tmp_path / "api.log").open("wb")
    server = subprocess.Popen(  # noqa: ASYNC220 - started once, before the event loop has work
        [str(venv_bin / "uvicorn"), "api.main:app", "--port", str(port), "--no-access-log"],
        env={**worker_env, "ACCESS_LOG": "false"},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/notifications/v1/multiple"
    body = [{"to": f"user{i}"} for i in range(50)]
    accepted: list[str] = []
    statuses: list[int | str] = []

    async def producer(client: httpx.AsyncClient) -> None:
        while True:
            try:
                response = await client.post(url, json=body, headers=tenant.headers)
            except httpx.TransportError as exc:  # refused once the server stopped listening
                statuses.append(type(exc).__name__)
                return
            statuses.append(response.status_code)
            if response.status_code == 201:
                accepted.extend(item["id"] for item in response.json())

    try:
        async with httpx.AsyncClient(timeout=10) as client:

            async def listening() -> bool:
                try:
                    return (await client.get(f"http://127.0.0.1:{port}/status/heartbeat")).status_code == 204
                except httpx.TransportError:
                    return False

            async def loaded() -> bool:  # SIGTERM under load, however slowly the machine got there
                if any(task.done() for task in producers):  # a producer stopped early: its status says why
                    return True
                return len(accepted) >= 50 * 20

            await wait_for(listening, 120)
            producers = [asyncio.create_task(producer(client)) for _ in range(20)]
            await wait_for(loaded, 60)
            server.send_signal(signal.SIGTERM)
            started = time.monotonic()
            await asyncio.gather(*producers)
        # uvicorn re-raises the signal after its graceful shutdown, so the exit status is "terminated"
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 30
    finally:
        if server.poll() is None:
            server.kill()
        log.close()

    assert "Application shutdown complete" in (tmp_path / "api.log").read_text()  # the lifespan closed cleanly
    assert len(accepted) >= 50 * 20  # the load did run
    assert all(status in (201, "ConnectError", "RemoteProtocolError", "ReadError") for status in statuses), statuses
    cache_keys = [fields[keys.STREAM_KEY_FIELD] for _, fields in await redis.xrange(keys.STREAM)]
    queued = {doc["id"] for payload in await redis.mget(cache_keys) for doc in orjson.loads(payload)}
    assert set(accepted) <= queued  # every notification answered 201 is in the stream
