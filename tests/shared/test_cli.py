"""The admin CLI: services and keys from the command line, against the test servers."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import keys, tenancy
from shared.secretbox import InvalidToken, SecretBox, new_secret_key
from tests.helpers import ROOT, Tenant, cli, insert_legacy_key


def test_service_key_lifecycle(worker_env: dict[str, str], engine: object, redis: object) -> None:
    created = cli(worker_env, "services", "create", "cli-service")
    assert created.returncode == 0, created.stderr
    service_id = re.search(r"id=(\S+)", created.stdout).group(1)  # type: ignore[union-attr]
    assert cli(worker_env, "services", "create", "cli-service").returncode == 1
    assert "cli-service" in cli(worker_env, "services", "list").stdout

    key = cli(worker_env, "keys", "create", service_id, "laptop")
    assert key.returncode == 0, key.stderr
    secret = re.search(r"key=(\S+)", key.stdout).group(1)  # type: ignore[union-attr]
    assert secret.startswith(f"laptop-{service_id}-")
    key_id = re.search(r"^id=(\S+)", key.stdout).group(1)  # type: ignore[union-attr]
    assert "secret_ciphertext" not in key.stdout
    listed = cli(worker_env, "keys", "list", service_id).stdout
    assert key_id in listed
    assert secret not in listed
    assert secret[-36:] not in listed

    revoked = cli(worker_env, "keys", "revoke", service_id, key_id)
    assert revoked.returncode == 0
    assert "revoked_at=None" not in revoked.stdout
    assert cli(worker_env, "keys", "revoke", service_id, service_id).returncode == 1


@pytest.mark.parametrize(
    "command",
    [("keys", "create", "{id}", "laptop"), ("keys", "list", "{id}"), ("services", "rate-limit", "{id}", "5")],
)
def test_a_command_for_a_service_that_does_not_exist_says_so_on_stderr_with_exit_code_1(
    worker_env: dict[str, str], engine: object, redis: object, command: tuple[str, ...]
) -> None:
    unknown = str(tenancy.new_id())
    done = cli(worker_env, *(part.format(id=unknown) for part in command))

    assert (done.returncode, done.stdout, done.stderr.splitlines()[-1]) == (1, "", f"no service {unknown}")


def test_dev_key_is_made_once_and_reused(
    worker_env: dict[str, str], tmp_path: Path, engine: object, redis: object
) -> None:
    file = tmp_path / "dev-api-key"

    first = cli(worker_env, "dev-key", "--file", str(file))
    second = cli(worker_env, "dev-key", "--file", str(file))

    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().startswith("make_run-")
    assert second.stdout == first.stdout
    assert file.read_text().strip() == first.stdout.strip()


async def test_a_saved_dev_key_of_the_older_shape_is_replaced_by_one_that_is_also_a_notify_key(
    worker_env: dict[str, str], tmp_path: Path, engine: AsyncEngine, redis: Redis
) -> None:
    legacy = await insert_legacy_key(engine, redis, "development")
    file = tmp_path / "dev-api-key"
    file.write_text(legacy + "\n")

    made = cli(worker_env, "dev-key", "--file", str(file))

    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().startswith("make_run-")
    assert file.read_text().strip() == made.stdout.strip()
    assert await tenancy.service_for_key(engine, redis, legacy) is not None  # not revoked: it may be in use


def test_keys_cannot_be_made_without_secret_key(
    worker_env: dict[str, str], tmp_path: Path, engine: object, redis: object
) -> None:
    service_id = re.search(r"id=(\S+)", cli(worker_env, "services", "create", "no-secret").stdout).group(1)  # type: ignore[union-attr]
    env = {**worker_env, "SECRET_KEY": ""}

    refused = cli(env, "keys", "create", service_id, "laptop", cwd=tmp_path)  # a folder without `make run`'s files

    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()  # one line, no traceback
    assert "SECRET_KEY is not set" in line
    assert "Fernet.generate_key()" in line
    assert "`make run`" in line
    assert "key=" not in refused.stdout


@pytest.mark.parametrize("left_by", [None, "a launcher that was killed"])
def test_without_a_running_make_run_a_missing_database_url_is_one_line_and_exit_code_2(
    tmp_path: Path, left_by: str | None
) -> None:
    if left_by:  # its servers.env names a process that is gone: not a running `make run`
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        (tmp_path / ".data").mkdir()
        (tmp_path / ".data" / "servers.env").write_text(
            f"LAUNCHER_PID={gone.pid}\nDATABASE_URL=postgresql://postgres@127.0.0.1:1/postgres\n"
            "REDIS_URL=redis://127.0.0.1:1/0\n"
        )
    unset = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")
    env = {name: value for name, value in os.environ.items() if name not in unset}
    env["PYTHONPATH"] = str(ROOT)

    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "services", "create", "newsletter"],
        env=env,
        cwd=tmp_path,  # a folder with no `make run`
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "DATABASE_URL is not set: set it, or start `make run` in this checkout and run this from its folder"
    ]


async def test_reseal_seals_every_secret_with_the_new_first_key_in_postgres_and_redis(
    worker_env: dict[str, str], engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    new_key = new_secret_key()
    rotated = {**worker_env, "SECRET_KEY": f"{new_key},{worker_env['SECRET_KEY']}"}

    resealed = cli(rotated, "keys", "reseal")

    assert resealed.returncode == 0, resealed.stderr
    assert resealed.stdout.startswith("1 key secret(s) sealed again")
    only_new = SecretBox(new_key)
    async with engine.connect() as conn:
        stored = (
            await conn.execute(text("SELECT secret_ciphertext FROM api_keys WHERE id = :id"), {"id": tenant.key_id})
        ).scalar_one()
    registered = await redis.hget(keys.api_key_secrets_key(tenant.service_id), str(tenant.key_id))
    assert only_new.open(stored) == tenant.key[-36:]
    assert registered == f"v:{stored}".encode()
    with pytest.raises(InvalidToken):
        SecretBox(worker_env["SECRET_KEY"]).open(stored)  # the old key can be dropped now


def test_a_missing_secret_key_names_the_one_make_run_made_in_this_checkout(
    worker_env: dict[str, str], tmp_path: Path, engine: object, redis: object
) -> None:
    (tmp_path / ".data").mkdir()
    (tmp_path / ".data" / "secret-key").write_text(new_secret_key() + "\n")  # a stopped `make run`'s
    service_id = re.search(r"id=(\S+)", cli(worker_env, "services", "create", "stopped").stdout).group(1)  # type: ignore[union-attr]
    env = {name: value for name, value in worker_env.items() if name != "SECRET_KEY"}

    refused = cli(env, "keys", "create", service_id, "laptop", cwd=tmp_path)

    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    assert "SECRET_KEY is not set: this checkout's `make run` keeps its own in .data/secret-key" in line
