"""Alembic migrations on a database of their own, with data: 0001 → 0002 → 0003 (partitioned) → head, and back."""

import asyncio
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from api.main import create_app
from devstack.embedded import EmbeddedPostgres
from devstack.local_server import free_port
from shared import ids
from shared.db import create_engine, sqlalchemy_url
from shared.settings import Settings
from tests.helpers import ROOT, Servers, drain_all, make_tenant, migrate
from worker.drain import Drain

DEFAULT_SERVICE_ID = "00000000-0000-7000-8000-000000000001"


def _sql(url: str, *statements: str, autocommit: bool = False) -> list[Any]:
    async def run() -> list[Any]:
        engine = create_async_engine(
            sqlalchemy_url(url), isolation_level="AUTOCOMMIT" if autocommit else "READ COMMITTED"
        )
        results = []
        async with engine.begin() as conn:
            for statement in statements:
                result = await conn.execute(text(statement))
                results.append(result.all() if result.returns_rows else None)
        await engine.dispose()
        return results

    return asyncio.run(run())


@pytest.fixture
def scratch_db(servers: Servers) -> Iterator[str]:
    """A new, empty database on the test server."""
    name = f"migrations_{secrets.token_hex(4)}"
    _sql(servers.database_url, f"CREATE DATABASE {name}", autocommit=True)
    yield servers.database_url.rsplit("/", 1)[0] + f"/{name}"
    _sql(servers.database_url, f"DROP DATABASE {name} WITH (FORCE)", autocommit=True)


def test_core_notifications_get_the_default_service(scratch_db: str) -> None:
    migrate(scratch_db, "0001")
    _sql(
        scratch_db,
        'INSERT INTO notifications (id, "to", created_at, updated_at) '
        "VALUES ('0190b8a4-6c1e-7000-8000-00000000000a', 'old@example.com', now(), now())",
        "INSERT INTO notification_personalization VALUES ('0190b8a4-6c1e-7000-8000-00000000000a', 'band', 'Korn')",
    )

    migrate(scratch_db, "0002")

    rows, services, pairs = _sql(
        scratch_db,
        'SELECT "to", service_id::text FROM notifications',
        "SELECT id::text, name FROM services",
        "SELECT key, value FROM notification_personalization",
    )
    assert [tuple(row) for row in rows] == [("old@example.com", DEFAULT_SERVICE_ID)]
    assert [tuple(row) for row in services] == [(DEFAULT_SERVICE_ID, "default")]
    assert [tuple(row) for row in pairs] == [("band", "Korn")]
    (nullable,) = _sql(
        scratch_db,
        "SELECT is_nullable FROM information_schema.columns "
        "WHERE table_name = 'notifications' AND column_name = 'service_id'",
    )
    assert nullable == [("NO",)]


def _app(scratch_db: str, redis_url: str) -> FastAPI:
    return create_app(Settings(database_url=scratch_db, redis_url=redis_url, _env_file=None))  # type: ignore[call-arg]


async def _fill_through_the_api(scratch_db: str, redis_url: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Accept notifications with the API and store them with the drain (on a database at head)."""
    engine = create_engine(scratch_db)
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    tenant = await make_tenant(engine, redis, "migrating")
    app = _app(scratch_db, redis_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=tenant.headers) as http:
            template = await http.post(
                "/templates/v1/", json={"name": "t", "subject": "((band))", "body": "Hi ((name))"}
            )
            single = await http.post("/notifications/v1/", json={"to": "plain@example.com"})
            personal = {"band": "Korn", "name": "Ann"}
            templated = await http.post(
                "/notifications/v1/",
                json={"to": "t@example.com", "template_id": template.json()["id"], "personalization": personal},
            )
            many = await http.post(
                "/notifications/v1/multiple",
                json=[
                    {"to": f"m{i}@example.com", "personalization": {"band": "Incubus", "i": str(i)}} for i in range(5)
                ],
            )
        drain = Drain(redis, engine, app.state.settings, "migrating")
        await drain.ensure_group()
        assert await drain_all(drain) == 7
    accepted = [single.json(), templated.json(), *many.json()]
    await redis.flushdb()  # GET must now be served by Postgres
    await redis.aclose()
    await engine.dispose()
    return tenant.headers, accepted


async def _get_each(scratch_db: str, redis_url: str, headers: dict[str, str], ids: list[str]) -> list[Any]:
    app = _app(scratch_db, redis_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as http:
            return [(await http.get(f"/notifications/v1/{notification_id}")).json() for notification_id in ids]


def test_downgrade_to_0002_and_upgrade_again_keep_every_notification_the_api_accepted(
    scratch_db: str, servers: Servers
) -> None:
    migrate(scratch_db, "head")
    headers, accepted = asyncio.run(_fill_through_the_api(scratch_db, servers.redis_url))
    ids = [item["id"] for item in accepted]
    assert len(accepted) == 7
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = scratch_db
    config.attributes["configure_logger"] = False

    command.downgrade(config, "0002")

    (rows, pairs, refs) = _sql(
        scratch_db,
        "SELECT id::text FROM notifications ORDER BY id",
        "SELECT key, value FROM notification_personalization ORDER BY notification_id, key",
        "SELECT template_version FROM notification_templates",
    )
    assert [row[0] for row in rows] == sorted(ids)
    assert [tuple(pair) for pair in pairs] == [
        (key, value)
        for item in sorted(accepted, key=lambda n: n["id"])
        for key, value in sorted(item["personalization"].items())
    ]
    assert refs == [(1,)]

    migrate(scratch_db, "head")

    assert asyncio.run(_get_each(scratch_db, servers.redis_url, headers, ids)) == accepted
    (rows, tables) = _sql(
        scratch_db,
        "SELECT count(*), count(DISTINCT tableoid) FROM notifications",
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_name IN ('notification_personalization', 'notification_templates', 'notifications_0002')",
    )
    assert rows == [(7, 1)]  # all in today's partition
    assert tables == []


def test_upgrade_refuses_ids_that_are_not_uuidv7(scratch_db: str) -> None:
    migrate(scratch_db, "0002")
    _sql(
        scratch_db,
        'INSERT INTO notifications (id, service_id, "to", created_at, updated_at) '
        f"VALUES ('6f1c2a4e-1d2b-4c3d-8e4f-5a6b7c8d9e0f', '{DEFAULT_SERVICE_ID}', 'v4', now(), now())",
    )

    with pytest.raises(RuntimeError, match="is not a UUIDv7"):
        migrate(scratch_db, "head")

    (rows,) = _sql(scratch_db, 'SELECT "to" FROM notifications')
    assert rows == [("v4",)]


def test_downgrade_and_upgrade_again(scratch_db: str) -> None:
    migrate(scratch_db, "head")
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = scratch_db
    config.attributes["configure_logger"] = False

    command.downgrade(config, "base")
    (tables,) = _sql(scratch_db, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
    assert tables == [(1,)]  # only alembic_version is left
    migrate(scratch_db, "head")
    (tables,) = _sql(
        scratch_db,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
        "AND table_name NOT LIKE 'notifications_p%' ORDER BY table_name",
    )
    assert [t for (t,) in tables] == [
        "alembic_version",
        "api_keys",
        "job_files",
        "job_keys",
        "jobs",
        "notifications",
        "services",
        "template_versions",
        "templates",
    ]


def test_0007_adds_jobs_and_a_job_id_beside_the_notifications_there_are_and_takes_them_away(scratch_db: str) -> None:
    migrate(scratch_db, "0006")
    stored = ids.notification_id_at(ids.new_stem(), 0)  # today's partition
    _sql(
        scratch_db,
        'INSERT INTO notifications (id, service_id, "to", created_at, updated_at) '
        f"VALUES ('{stored}', '{DEFAULT_SERVICE_ID}', 'kept@example.com', now(), now())",
    )

    migrate(scratch_db, "0007")

    template, job = "0190b8a4-6c1e-7000-8000-0000000000aa", "0190b8a4-6c1e-7000-8000-0000000000bb"
    (rows, _, _, _, checks) = _sql(
        scratch_db,
        "SELECT id::text, job_id FROM notifications",
        f"INSERT INTO templates (id, service_id, name, type, created_at) "
        f"VALUES ('{template}', '{DEFAULT_SERVICE_ID}', 't', 'email', now())",
        f"INSERT INTO template_versions VALUES ('{template}', 1, 's', 'b', now())",
        "INSERT INTO jobs (id, name, template_id, template_version, notification_count, status, created_at) "
        f"VALUES ('{job}', 'j', '{template}', 1, 2, 'queued', now())",
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'jobs'::regclass AND contype = 'c'",
    )
    assert rows == [(stored, None)]  # the column is there, NULL for what was stored before
    assert checks == [(4,)]
    with pytest.raises(IntegrityError, match="jobs_status_check"):
        _sql(scratch_db, f"UPDATE jobs SET status = 'finished' WHERE id = '{job}'")
    with pytest.raises(IntegrityError, match="jobs_cancelled_at_check"):
        _sql(scratch_db, f"UPDATE jobs SET status = 'cancelled' WHERE id = '{job}'")
    _sql(scratch_db, f"UPDATE notifications SET job_id = '{job}'")

    migrate_down(scratch_db, "0006")

    (rows, tables) = _sql(
        scratch_db,
        'SELECT id::text, "to" FROM notifications',
        "SELECT to_regclass('jobs') IS NULL",
    )
    assert rows == [(stored, "kept@example.com")]
    assert tables == [(True,)]


def migrate_down(database_url: str, revision: str) -> None:
    """Downgrade the database at `database_url` to `revision`."""
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    command.downgrade(config, revision)


def test_a_migration_started_before_postgres_listens_waits_for_it(
    tmp_path: Path, worker_env: dict[str, str], venv_bin: Path
) -> None:
    # compose starts `migrate` once Postgres's healthcheck passes, which may be before it takes TCP connections
    port = free_port()
    env = {**worker_env, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/postgres"}
    log = tmp_path / "migrate.log"
    with log.open("wb") as out:
        migration = subprocess.Popen(
            [str(venv_bin / "alembic"), "upgrade", "head"], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        for _ in range(600):  # it met a closed port and is waiting
            if "does not take connections yet" in log.read_text() or migration.poll() is not None:
                break
            time.sleep(0.1)
        assert migration.poll() is None, log.read_text()
        server = EmbeddedPostgres(tmp_path / "late", port).start()
        try:
            assert migration.wait(timeout=120) == 0, log.read_text()
            tables = _sql(server.url, "SELECT to_regclass('notifications') IS NOT NULL")
            assert tables == [[(True,)]]
        finally:
            server.stop()
    finally:
        if migration.poll() is None:
            migration.kill()
            migration.wait()


def test_a_migration_with_a_wrong_database_fails_at_once(
    servers: Servers, worker_env: dict[str, str], venv_bin: Path
) -> None:
    wrong = servers.database_url.rsplit("/", 1)[0] + "/no_such_database"
    done = subprocess.run(
        [str(venv_bin / "alembic"), "upgrade", "head"],
        env={**worker_env, "DATABASE_URL": wrong},
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert b"no_such_database" in done.stderr + done.stdout
    assert b"does not take connections yet" not in done.stderr + done.stdout
