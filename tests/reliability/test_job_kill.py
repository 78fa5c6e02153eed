"""kill -9 of a real API process in the middle of a job's upload: Postgres rolls the job back, nothing of it stays.

Rows have reached Postgres (a COPY of the job's transaction is done, the transaction still open) when the API is
killed; once Postgres has noticed the dead connection no transaction is left open, and no job, notification, kept
file or Idempotency-Key of it remains. A fresh API then takes the same upload.
"""

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.embedded import free_port
from shared import job_store
from tests.helpers import ROOT, Tenant, wait_for

ROWS_BEFORE_KILL = job_store.JOB_BATCH_ROWS * 2 + 500  # two batches COPYed, a third being read
ROWS = job_store.JOB_BATCH_ROWS * 4
CHUNK_ROWS = 500


def _line(number: int) -> bytes:
    return f"{number}@example.com,Name {number}\n".encode()


async def _open_copies(engine: AsyncEngine) -> list[int]:
    """Backends of other sessions in a transaction whose last statement was a COPY into notifications."""
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND xact_start IS NOT NULL AND backend_xid IS NOT NULL AND query ILIKE 'COPY%notifications%'"
            )
        )
        return [int(pid) for pid in found.scalars()]


async def _open_transactions(engine: AsyncEngine, pids: list[int] | None = None) -> list[tuple[int, str]]:
    """Other client sessions with a transaction open (of `pids` only, when given; autovacuum is not a client)."""
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT pid, state FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL AND backend_type = 'client backend'"
            )
        )
        return [(int(pid), str(state)) for pid, state in found if pids is None or pid in pids]


async def _left_of_jobs(engine: AsyncEngine) -> tuple[int, int, int, int]:
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM notifications WHERE job_id IS NOT NULL), "
                "(SELECT count(*) FROM job_files), (SELECT count(*) FROM job_keys)"
            )
        )
        jobs, notifications, files, job_keys = found.one()
    return int(jobs), int(notifications), int(files), int(job_keys)


class _Api:
    """A uvicorn API process of its own, its output in a file."""

    def __init__(self, venv_bin: Path, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(venv_bin / "uvicorn"), "api.main:app", "--port", str(self.port), "--no-access-log"],
                env={**env, "ACCESS_LOG": "false"},
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def ready(self, client: httpx.AsyncClient) -> None:
        async def up() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the API exited: {self.log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                return (await client.get(f"{self.url}/status/heartbeat")).status_code == 204
            return False

        await wait_for(up, 120)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


async def test_kill_9_mid_upload_leaves_nothing_and_a_fresh_api_takes_the_job(
    worker_env: dict[str, str], venv_bin: Path, tenant: Tenant, engine: AsyncEngine, tmp_path: Path
) -> None:
    first = _Api(venv_bin, worker_env, tmp_path / "api-1.log")
    second: _Api | None = None
    held = asyncio.Event()  # set once the API is killed: the upload waits there
    sent_rows = 0

    async def upload() -> AsyncIterator[bytes]:
        nonlocal sent_rows
        yield b"to,name\n"
        for start in range(1, ROWS + 1, CHUNK_ROWS):
            if sent_rows >= ROWS_BEFORE_KILL:
                await held.wait()
            yield b"".join(_line(number) for number in range(start, start + CHUNK_ROWS))
            sent_rows += CHUNK_ROWS
            await asyncio.sleep(0.01)  # slowly: a chunk at a time

    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(120), headers=tenant.headers) as client:
            await first.ready(client)
            made = await client.post(
                f"{first.url}/templates/v1/", json={"name": "t", "subject": "Hi ((name))", "body": "Hello ((name))"}
            )
            assert made.status_code == 201, made.text
            params = {"template_id": made.json()["id"], "name": "killed"}
            headers = {"Content-Type": "text/csv", "Idempotency-Key": "killed-upload"}
            posting = asyncio.create_task(
                client.post(f"{first.url}/notifications/v1/jobs", params=params, content=upload(), headers=headers)
            )

            copies: list[int] = []

            async def copied() -> bool:
                assert not posting.done(), posting.result().text
                copies[:] = await _open_copies(engine)
                return sent_rows >= ROWS_BEFORE_KILL and bool(copies)

            await wait_for(copied, 120)  # rows are in Postgres, in the job's open transaction
            first.process.send_signal(signal.SIGKILL)
            assert first.process.wait(timeout=30) == -signal.SIGKILL
            held.set()  # the rest of the body goes to a dead socket
            try:
                await asyncio.wait_for(posting, 60)
                raise AssertionError("the upload to a killed API was answered")
            except httpx.TransportError:
                pass

            async def rolled_back() -> bool:  # Postgres noticed the dead connection and ended its transaction
                return await _open_transactions(engine, copies) == []

            await wait_for(rolled_back, 120)
            assert await _open_transactions(engine) == []
            assert await _left_of_jobs(engine) == (0, 0, 0, 0)

            # a fresh API takes the same upload (the same Idempotency-Key: the killed request left no record)
            second = _Api(venv_bin, worker_env, tmp_path / "api-2.log")
            await second.ready(client)
            sent_rows = 0
            again = await client.post(
                f"{second.url}/notifications/v1/jobs", params=params, content=upload(), headers=headers
            )
            assert again.status_code == 201, again.text
            assert (again.json()["status"], again.json()["rows"]) == ("stored", ROWS)
            assert await _left_of_jobs(engine) == (1, ROWS, 0, 1)
    finally:
        held.set()
        first.stop()
        if second is not None:
            second.stop()
