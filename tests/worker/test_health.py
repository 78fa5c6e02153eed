"""`python -m worker.health`: each worker's own heartbeat, failing when its drains stop completing loops."""

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT
from worker.health import Heartbeat


def health(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the health check as the compose healthcheck and the Kubernetes liveness probe do."""
    return subprocess.run(
        [sys.executable, "-m", "worker.health"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


async def until_health_exits(env: dict[str, str], code: int, limit: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run the check until it exits with `code`, failing the test after `limit` seconds."""
    deadline = asyncio.get_running_loop().time() + limit
    while (done := await asyncio.to_thread(health, env)).returncode != code:
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"the health check did not exit {code} within {limit}s: {done.stdout}{done.stderr}")
        await asyncio.sleep(0.2)
    return done


@pytest.fixture
def heartbeat_env(worker_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The worker environment with a heartbeat file and a short age limit."""
    return {
        **worker_env,
        "WORKER_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
        "WORKER_HEARTBEAT_MAX_AGE_SECONDS": "3",
    }


@pytest.fixture
def patient_env(heartbeat_env: dict[str, str]) -> dict[str, str]:
    """The heartbeat environment with a limit no check's own start-up can reach on a busy machine."""
    return {**heartbeat_env, "WORKER_HEARTBEAT_MAX_AGE_SECONDS": "60"}


@pytest.fixture
def worker(venv_bin: Path, heartbeat_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real worker process keeping the heartbeat, killed after the test."""
    with (tmp_path / "worker.log").open("wb") as out:
        process = subprocess.Popen(
            [str(venv_bin / "arq"), "worker.main.WorkerSettings"],
            env=heartbeat_env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    yield process
    process.send_signal(signal.SIGCONT)
    process.kill()
    process.wait(timeout=30)


async def test_a_looping_worker_is_healthy_and_a_frozen_one_is_not(
    worker: subprocess.Popen[bytes], heartbeat_env: dict[str, str]
) -> None:
    # Every worker of a queue shares arq's health key, so `arq --check` passed for a frozen worker; this one speaks
    # for this worker's own drains
    assert "healthy" in (await until_health_exits(heartbeat_env, 0)).stdout
    worker.send_signal(signal.SIGSTOP)  # frozen: its drains complete no loop
    assert "last completed a loop" in (await until_health_exits(heartbeat_env, 1)).stderr
    worker.send_signal(signal.SIGCONT)
    await until_health_exits(heartbeat_env, 0)


def test_a_worker_with_one_drain_that_never_completes_a_loop_is_unhealthy(
    patient_env: dict[str, str], tmp_path: Path
) -> None:
    heartbeat = Heartbeat(tmp_path / "heartbeat", drains=2)
    for _ in range(3):
        heartbeat.beat(0)  # the first shard's drain loops, the second's is stuck
    done = health(patient_env)
    assert done.returncode == 1
    assert "no heartbeat" in done.stderr
    heartbeat.beat(1)
    assert health(patient_env).returncode == 0


def test_a_stale_file_from_an_earlier_run_does_not_count(patient_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "heartbeat"
    path.touch()
    assert health(patient_env).returncode == 0
    Heartbeat(path, drains=1)  # a restarted worker, before its first loop
    assert health(patient_env).returncode == 1


def test_without_a_heartbeat_file_the_check_says_what_to_set(heartbeat_env: dict[str, str]) -> None:
    env = {name: value for name, value in heartbeat_env.items() if name != "WORKER_HEARTBEAT_FILE"}
    done = health(env)
    assert done.returncode == 1
    assert "WORKER_HEARTBEAT_FILE is not set" in done.stderr


def test_an_old_heartbeat_fails_the_check(patient_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "heartbeat"
    path.touch()
    os.utime(path, (path.stat().st_mtime - 120, path.stat().st_mtime - 120))  # older than the limit of 60 s
    done = health(patient_env)
    assert done.returncode == 1
    assert "last completed a loop" in done.stderr
