"""Embedded servers touch only what is their own: their port, their data folder, no file mode outside it.

Real redis-server and PostgreSQL processes; a "foreign" server is a plain listening socket, or the session's
servers (another data folder, another process).
"""

import os
import socket
import stat
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import redis

from devstack import embedded, local_server
from devstack.embedded import (
    DataFolderInUse,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
    NotOurServer,
    PortInUse,
    free_port,
)
from tests.helpers import Servers


def _port(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


def _processes_in(folder: Path, settle_seconds: float = 5.0) -> list[psutil.Process]:
    """Processes whose working folder is `folder` (our servers chdir to their data folder), once they are gone.

    A killed server's children (PostgreSQL's backends) exit on their own a moment after it: they are given up to
    `settle_seconds` (a loaded machine), and whatever is still there then is returned.
    """
    deadline = time.monotonic() + settle_seconds
    while True:
        found = []
        for process in psutil.process_iter(["cwd", "status"]):
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if process.info["cwd"] and Path(process.info["cwd"]) == folder.resolve():
                found.append(process)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_taken_port_asked_for_is_refused_and_left_alone(tmp_path: Path, listener: socket.socket) -> None:
    server = EmbeddedRedis(tmp_path / "redis", _port(listener))
    with pytest.raises(PortInUse, match=f"port {_port(listener)} on 127.0.0.1 is in use"):
        server.start()
    assert server.process is None
    assert _processes_in(tmp_path / "redis") == []
    with socket.create_connection(("127.0.0.1", _port(listener)), timeout=2):
        pass  # the other server still has its port


@pytest.mark.parametrize("kind", [EmbeddedRedis, EmbeddedPostgres])
def test_a_port_taken_between_check_and_bind_is_picked_again(
    tmp_path: Path, listener: socket.socket, monkeypatch: pytest.MonkeyPatch, kind: type[EmbeddedRedis]
) -> None:
    # the race of two parallel `make test`s: our check said free, then the other took the port before our bind
    picks = iter([_port(listener), free_port()])
    monkeypatch.setattr(local_server, "free_port", lambda: next(picks))
    monkeypatch.setattr(local_server, "port_is_free", lambda port, host="": True)
    server = kind(tmp_path / "data").start()
    try:
        assert server.port != _port(listener)
        assert server.process is not None
        assert server.process.poll() is None
    finally:
        server.stop()


def test_redis_that_answers_must_be_ours(tmp_path: Path, servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    # what Linux never lets happen by a bind, a macOS wildcard listener can: another Redis answers on our port
    foreign_port = urlsplit(servers.redis_url).port
    assert foreign_port is not None
    connect = redis.Redis
    monkeypatch.setattr(redis, "Redis", lambda host, port, **kw: connect(host=host, port=foreign_port, **kw))
    server = EmbeddedRedis(tmp_path / "redis", free_port())
    with pytest.raises(NotOurServer, match="not ours"):
        server.start()
    assert _processes_in(tmp_path / "redis") == []  # ours was stopped


def test_postgres_that_answers_must_be_ours(tmp_path: Path, servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    foreign_port = urlsplit(servers.database_url).port
    assert foreign_port is not None
    ask = EmbeddedPostgres._data_directory
    monkeypatch.setattr(EmbeddedPostgres, "_data_directory", staticmethod(lambda port: ask(foreign_port)))
    server = EmbeddedPostgres(tmp_path / "pg", free_port())
    with pytest.raises(NotOurServer, match=f"not {tmp_path / 'pg'}"):
        server.start()
    assert _processes_in(tmp_path / "pg") == []


def test_one_server_per_data_folder(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path / "redis").start()
    try:
        with pytest.raises(DataFolderInUse):
            EmbeddedRedis(tmp_path / "redis").start()
        client = redis.Redis.from_url(first.url)
        assert client.ping()
        client.close()
    finally:
        first.stop()
    EmbeddedRedis(tmp_path / "redis").start().stop()  # free again once the first stopped


def _modes(paths: list[Path]) -> dict[Path, int]:
    return {path: path.stat().st_mode for path in paths}


def _pginstall_and_parents() -> list[Path]:
    pginstall = embedded._pg_bin().parent
    return [*pginstall.parents, *pginstall.rglob("*")]


@pytest.mark.skipif(os.geteuid() != 0, reason="as another user PostgreSQL runs as that user; nothing to open up")
def test_as_root_no_mode_changes_outside_the_data_folder(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    data = closed / "project" / ".data"  # the project's data folder: what is inside may change
    data.mkdir(parents=True)
    datadir = data / "postgres"
    outside = [*data.parents, *_pginstall_and_parents()]
    before = _modes(outside)
    server = EmbeddedPostgres(datadir).start()
    try:
        assert EmbeddedPostgres._data_directory(server.port) == str(datadir)
    finally:
        server.stop()
    assert {path: oct(mode) for path, mode in _modes(outside).items() if mode != before[path]} == {}
    assert stat.S_IMODE(closed.stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="the system user is only for root")
def test_as_root_without_user_namespaces_a_closed_folder_is_named_not_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "_user_namespace_prefix", lambda: None)
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    outside = [*closed.parents, closed, *_pginstall_and_parents()]
    before = _modes(outside)
    with pytest.raises(EmbeddedServerError, match="may not enter /") as refused:
        EmbeddedPostgres(closed / "pg").start()
    named = Path(str(refused.value).split("may not enter ")[1].split(" (mode")[0])
    assert named in [*closed.parents, closed]  # pytest's own base folder may be the first closed one
    assert _modes(outside) == before
