"""`make run` (devstack/launcher.py) works on servers of its own, side by side with another, and leaves nothing behind.

Real launchers, each with its own data folder and API port, as two checkouts would run them; the embedded ports
are left at their defaults, so the second launcher finds them taken (by the first, or by whatever holds them).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from devstack import launcher
from devstack.embedded import EmbeddedRedis, free_port, port_is_free
from shared import api_key_format
from shared.secretbox import SecretBox

ROOT = Path(__file__).resolve().parent.parent.parent
#: What a user's shell may hold that would point the launcher elsewhere.
UNSET = (
    "DATABASE_URL",
    "REDIS_URL",
    "ADMIN_TOKEN",
    "SECRET_KEY",
    "EMBEDDED_PG_PORT",
    "EMBEDDED_REDIS_PORT",
    "PORT",
    "HOST",
)


class Launcher:
    """One `make run`: `python -m devstack.launcher --data <folder> --port <port>`, its output in a file."""

    def __init__(self, folder: Path, data: str = "data", **settings: str) -> None:
        self.folder = folder
        self.data = folder / data
        self.port = free_port()
        self.output = folder / "output.log"
        env = {name: value for name, value in os.environ.items() if name not in UNSET}
        env.update(WORKER_METRICS_PORT="0", LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
        env.update(settings)
        self.settings = settings
        folder.mkdir(parents=True)
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "devstack.launcher", "--data", str(self.data), "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def api(self) -> str:
        """The API's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until the API answers its heartbeat."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output.read_text()
            try:
                if httpx.get(f"{self.api}/status/heartbeat", timeout=1).status_code == 204:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"no heartbeat within {timeout}s:\n{self.output.read_text()}")

    def server_port(self, name: str) -> int:
        """The port of the embedded server the launcher printed (`PostgreSQL`, `Redis`)."""
        found = re.search(rf"embedded {name}: \w+://[^@/]*@?127\.0\.0\.1:(\d+)/", self.output.read_text())
        assert found, self.output.read_text()
        return int(found.group(1))

    @property
    def headers(self) -> dict[str, str]:
        """The development key's Authorization header."""
        return {"Authorization": f"Bearer {(self.data / 'dev-api-key').read_text().strip()}"}

    def descendants(self) -> list[psutil.Process]:
        """Every process the launcher started (and theirs), servers included."""
        return list(psutil.Process(self.process.pid).children(recursive=True))

    def kill(self) -> None:
        """SIGKILL the launcher alone: it cannot stop anything itself."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        """Stop the launcher as Ctrl-C would, if it still runs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)


def _post_and_get(launcher: Launcher, headers: dict[str, str]) -> tuple[int, int]:
    created = httpx.post(f"{launcher.api}/notifications/v1/", json={"to": "side-by-side"}, headers=headers)
    if created.status_code != 201:
        return created.status_code, 0
    fetched = httpx.get(f"{launcher.api}/notifications/v1/{created.json()['id']}", headers=headers)
    return created.status_code, fetched.status_code


def _assert_killed_leaves_nothing(launcher: Launcher) -> None:
    started = launcher.descendants()
    names = {" ".join(process.cmdline()) for process in started}
    assert any("redis-server" in name for name in names), names
    assert any("/postgres" in name for name in names), names
    assert any("uvicorn" in name for name in names), names
    assert any("arq" in name for name in names), names
    ports = [launcher.port, launcher.server_port("PostgreSQL"), launcher.server_port("Redis")]
    launcher.kill()
    _, alive = psutil.wait_procs(started, timeout=15)
    assert alive == []
    assert all(port_is_free(port) for port in ports)


def test_two_launchers_side_by_side_each_use_their_own_servers_and_leave_nothing_when_killed(
    tmp_path: Path,
) -> None:
    first, second = Launcher(tmp_path / "first"), Launcher(tmp_path / "second")
    try:
        first.wait_ready()
        second.wait_ready()
        for name in ("PostgreSQL", "Redis"):
            ports = {first.server_port(name), second.server_port(name)}
            assert len(ports) == 2
            assert ports.isdisjoint({5432, 6379})  # never the servers this machine runs for someone else
        running = (first.folder / "data" / "servers.env").read_text()  # where `make loadtest` finds them
        assert f"127.0.0.1:{first.server_port('Redis')}/" in running
        assert f"127.0.0.1:{first.server_port('PostgreSQL')}/" in running
        assert _post_and_get(first, first.headers) == (201, 200)
        assert _post_and_get(second, second.headers) == (201, 200)
        assert _post_and_get(first, second.headers)[0] == 401  # each registry holds only its own keys
        secret_key = first.folder / "data" / "secret-key"  # made once, kept like the admin token
        assert secret_key.stat().st_mode & 0o777 == 0o600
        SecretBox(secret_key.read_text().strip())  # a valid SECRET_KEY
        dev_key = first.headers["Authorization"].removeprefix("Bearer ")
        assert api_key_format.looks_like_key(dev_key)
        assert not api_key_format.is_legacy_key(dev_key)  # also a GOV.UK Notify key

        _assert_killed_leaves_nothing(first)
        assert _post_and_get(second, second.headers) == (201, 200)  # the other stack did not notice
        _assert_killed_leaves_nothing(second)
    finally:
        for launcher in (first, second):
            if launcher.process.poll() is None:
                launcher.process.send_signal(signal.SIGTERM)
                launcher.process.wait(timeout=60)


def test_a_taken_api_port_stops_the_launcher_with_one_line_naming_port(tmp_path: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    env = {name: value for name, value in os.environ.items() if name not in UNSET}
    done = subprocess.run(
        [sys.executable, "-m", "devstack.launcher", "--data", str(tmp_path / "data"), "--port", str(port)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"PORT={port}: port {port} on 127.0.0.1 is in use by another process; set PORT to a free one"
    ]
    assert not (tmp_path / "data").exists()  # nothing was started


def test_a_taken_embedded_port_that_was_set_stops_with_one_line_naming_the_setting(
    tmp_path: Path, listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = listener.getsockname()[1]
    monkeypatch.setenv("EMBEDDED_REDIS_PORT", str(port))
    with pytest.raises(SystemExit) as stopped:
        launcher._start_embedded(lambda chosen: EmbeddedRedis(tmp_path / "redis", chosen), "EMBEDDED_REDIS_PORT", 56379)
    assert str(stopped.value) == (
        f"EMBEDDED_REDIS_PORT={port}: port {port} on 127.0.0.1 is in use by another process;"
        " set EMBEDDED_REDIS_PORT to a free port, or unset it"
    )


def test_a_taken_default_embedded_port_moves_to_a_free_one_and_says_so(
    tmp_path: Path, listener: socket.socket, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    default = listener.getsockname()[1]
    monkeypatch.delenv("EMBEDDED_REDIS_PORT", raising=False)
    server = launcher._start_embedded(
        lambda chosen: EmbeddedRedis(tmp_path / "redis", chosen), "EMBEDDED_REDIS_PORT", default
    )
    try:
        assert server.port != default
        assert f"port {default} is in use by another process: Redis on {server.port} instead" in capsys.readouterr().out
    finally:
        server.stop()


@pytest.fixture(scope="module")
def beside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """A `make run` of a checkout (its folder's `.data`), its workers' metrics on a port of their own."""
    launcher = Launcher(tmp_path_factory.mktemp("checkout") / "clone", ".data", WORKER_METRICS_PORT=str(free_port()))
    try:
        launcher.wait_ready()
        yield launcher
    finally:
        launcher.stop()


def _clean_env() -> dict[str, str]:
    """A user's shell with none of the service's settings, as after a fresh clone."""
    env = {name: value for name, value in os.environ.items() if name not in UNSET}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_the_cli_beside_make_run_takes_its_servers_and_secret_key_and_says_so(beside: Launcher) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shared.cli", *args],
            cwd=beside.folder,  # the checkout's folder, as the README runs it
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    created = cli("services", "create", "newsletter")
    assert created.returncode == 0, created.stderr
    assert created.stderr.splitlines() == [
        "DATABASE_URL, REDIS_URL, SECRET_KEY from the running `make run` (.data/servers.env)"
    ]
    service_id = re.search(r"id=(\S+)", created.stdout).group(1)  # type: ignore[union-attr]
    key = cli("keys", "create", service_id, "production")
    assert key.returncode == 0, key.stderr
    secret = re.search(r"key=(\S+)", key.stdout).group(1)  # type: ignore[union-attr]
    sent = httpx.post(
        f"{beside.api}/notifications/v1/", json={"to": "cli"}, headers={"Authorization": f"Bearer {secret}"}
    )
    assert sent.status_code == 201, sent.text  # the key is the running API's: same servers, same SECRET_KEY


def test_under_make_run_the_workers_metrics_listen_on_loopback_only(beside: Launcher) -> None:
    port = int(beside.settings["WORKER_METRICS_PORT"])
    deadline = time.monotonic() + 120
    listening: list[str] = []
    while not listening and time.monotonic() < deadline:
        for process in beside.descendants():
            try:
                connections = process.net_connections("inet")
            except psutil.Error:
                continue
            listening += [c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        time.sleep(0.2)
    assert listening == ["127.0.0.1"], beside.output.read_text()
    assert "# TYPE" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert f"worker metrics on http://127.0.0.1:{port}/metrics" in beside.output.read_text()  # the banner says where


def _git_status() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def test_make_loadtest_finds_the_service_on_port_and_leaves_the_checkout_clean(beside: Launcher) -> None:
    before = _git_status()
    env = {**_clean_env(), "PORT": str(beside.port), "API_KEY": (beside.data / "dev-api-key").read_text().strip()}
    short = ["--scenario", "heartbeat", "--users", "1", "--spawn-rate", "1", "--run-time", "2s"]

    done = subprocess.run(
        [sys.executable, "-m", "loadtest.run_locust", *short],
        cwd=beside.folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert _git_status() == before  # nothing tracked rewritten, nothing untracked left
    (row,) = (beside.data / "loadtest" / "locust.csv").read_text().splitlines()[1:]
    assert ",heartbeat,1," in row
    assert list((beside.data / "loadtest" / "locust").glob("*_heartbeat_stats.csv"))


def test_a_taken_default_worker_metrics_port_moves_to_a_free_one_and_says_so(
    listener: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    default = listener.getsockname()[1]
    env: dict[str, str] = {}

    chosen = launcher._worker_metrics_port(env, "127.0.0.1", default)

    assert chosen != default
    assert env["WORKER_METRICS_PORT"] == str(chosen)  # the workers serve where the banner says
    assert f"port {default} is in use by another process: worker metrics on {chosen} instead" in capsys.readouterr().out
    assert launcher._worker_metrics_port({"WORKER_METRICS_PORT": str(default)}, "127.0.0.1", default) == default  # set
