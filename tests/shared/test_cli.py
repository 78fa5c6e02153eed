"""The admin CLI: services and keys from the command line, against the test servers."""

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m shared.cli ARGS`."""
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_service_key_lifecycle(worker_env: dict[str, str], engine: object, redis: object) -> None:
    created = cli(worker_env, "services", "create", "cli-service")
    assert created.returncode == 0, created.stderr
    service_id = re.search(r"id=(\S+)", created.stdout).group(1)  # type: ignore[union-attr]
    assert cli(worker_env, "services", "create", "cli-service").returncode == 1
    assert "cli-service" in cli(worker_env, "services", "list").stdout

    key = cli(worker_env, "keys", "create", service_id, "laptop")
    assert key.returncode == 0, key.stderr
    secret = re.search(r"key=(nk_\S+)", key.stdout).group(1)  # type: ignore[union-attr]
    key_id = re.search(r"^id=(\S+)", key.stdout).group(1)  # type: ignore[union-attr]
    listed = cli(worker_env, "keys", "list", service_id).stdout
    assert key_id in listed
    assert secret not in listed

    revoked = cli(worker_env, "keys", "revoke", service_id, key_id)
    assert revoked.returncode == 0
    assert "revoked_at=None" not in revoked.stdout
    assert cli(worker_env, "keys", "revoke", service_id, service_id).returncode == 1


def test_dev_key_is_made_once_and_reused(
    worker_env: dict[str, str], tmp_path: Path, engine: object, redis: object
) -> None:
    file = tmp_path / "dev-api-key"

    first = cli(worker_env, "dev-key", "--file", str(file))
    second = cli(worker_env, "dev-key", "--file", str(file))

    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().startswith("nk_")
    assert second.stdout == first.stdout
    assert file.read_text().strip() == first.stdout.strip()
