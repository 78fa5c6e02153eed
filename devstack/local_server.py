"""A server we start as a child process that touches only what is its own: its port, its data folder, its life.

- **Its port.** Checked free before starting (a bind test); a port asked for that is taken is `PortInUse`; with
  `port=None` a free one is picked, again if another process takes it first. Kept across restarts. What answers
  on it must be the server we started, else `NotOurServer`.
- **Its data folder, one server at a time.** A lock beside the folder (`flock` on `<folder>.lock`, inherited by
  the server) refuses a second server on the same folder.
- **It does not outlive us** (devstack.lifetime).

Errors:

    EmbeddedServerError (RuntimeError)  a server did not start; the message says why
    ├── PortInUse                       the port asked for is taken by another process
    ├── NotOurServer                    what answers on our port is not the server we started
    └── DataFolderInUse                 a server of ours already runs on this data folder
"""

import fcntl
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Self

import psutil

__all__ = [
    "HOST",
    "DataFolderInUse",
    "EmbeddedServerError",
    "LocalServer",
    "NotOurServer",
    "PortInUse",
    "free_port",
    "log_size",
    "port_is_free",
]

HOST = "127.0.0.1"
#: Ports tried when we pick them (each is free when picked; another process may take it before the server binds).
PORT_ATTEMPTS = 5
#: What a server logs when its bind failed.
BIND_FAILED = ("Address already in use", "could not bind")


class EmbeddedServerError(RuntimeError):
    """A server did not start."""


class PortInUse(EmbeddedServerError):
    """The port asked for is taken by another process."""


class NotOurServer(EmbeddedServerError):
    """What answers on our port is not the server we started."""


class DataFolderInUse(EmbeddedServerError):
    """A server of ours already runs on this data folder."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = HOST) -> bool:
    """Return whether a server could listen on `host`:`port` now (the same bind a server makes)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: a TIME_WAIT is no obstacle
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class LocalServer:
    """A server process of ours on 127.0.0.1:`port` (None: a free one) with its data in `datadir`.

    Subclasses say how to launch it and how to know that it answers (`_launch`), and how to stop it (`stop`).
    """

    what = "server"
    program = ""

    def __init__(self, datadir: Path, port: int | None) -> None:
        self.datadir = datadir.resolve()
        self._port = port
        self._pick_port = port is None
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None

    @property
    def port(self) -> int:
        """The port the server listens on (the one asked for, or the one picked when it started)."""
        if self._port is None:
            raise RuntimeError(f"{self.what} has no port before it started")
        return self._port

    @property
    def pid(self) -> int:
        """The server's process id (while running)."""
        if self.process is None:
            raise RuntimeError(f"{self.what} is not running")
        return self.process.pid

    def _prepare(self) -> None:
        """Make the data folder ready to serve (before any port is chosen)."""

    def _launch(self, port: int, timeout: float) -> subprocess.Popen[bytes]:
        """Start the server on `port`; return its process once it answers as ours (see `_wait`)."""
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> Self:
        """Start the server on its port (or on a free one) and wait until it answers as ours."""
        if self.process is not None:
            raise RuntimeError(f"{self.what} is already running")
        self.datadir.mkdir(parents=True, exist_ok=True)
        self._lock_folder()
        try:
            self._prepare()
            for attempt in range(1, PORT_ATTEMPTS + 1):
                port = free_port() if self._pick_port else self.port
                try:
                    if not port_is_free(port):
                        raise PortInUse(f"port {port} on {HOST} is in use by another process")
                    self.process = self._launch(port, timeout)
                except (PortInUse, NotOurServer):
                    if not self._pick_port or attempt == PORT_ATTEMPTS:
                        raise
                    continue
                self._port, self._pick_port = port, False
                return self
            raise AssertionError("unreachable")
        except BaseException:
            self._unlock_folder()
            raise

    def _stop(self, sig: signal.Signals) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        self._unlock_folder()

    def _lock_folder(self) -> None:
        lock = (self.datadir.parent / f"{self.datadir.name}.lock").open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise DataFolderInUse(f"another {self.what} of ours runs on {self.datadir}") from None
        self._lock = lock
        self._stop_leftovers()

    def _unlock_folder(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _stop_leftovers(self) -> None:
        """Stop a server of our kind still running in our folder: one that outlived a killed parent.

        Only an earlier version of this module left such servers; while we hold the lock, none started here runs.
        """
        found = []
        for process in psutil.process_iter(["name", "cwd", "ppid"]):
            cwd = process.info["cwd"]
            if process.info["name"] == self.program and cwd and Path(cwd) == self.datadir:
                found.append(process)
        pids = {process.pid for process in found}
        leaders = [process for process in found if process.info["ppid"] not in pids]
        for process in leaders:
            process.send_signal(signal.SIGINT)
        psutil.wait_procs(leaders, timeout=30)

    def _wait(
        self,
        process: subprocess.Popen[bytes],
        port: int,
        answers: Callable[[], bool],
        log: Path,
        offset: int,
        timeout: float,
    ) -> None:
        """Wait until `answers()` (which raises NotOurServer if another server answers); stop the process on failure."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                if process.poll() is not None:
                    text = log.read_bytes()[offset:].decode(errors="replace") if log.exists() else ""
                    if any(sign in text for sign in BIND_FAILED):
                        raise PortInUse(f"port {port} on {HOST} is in use by another process")
                    raise EmbeddedServerError(f"{self.what} exited with code {process.returncode}:\n{text[-2000:]}")
                if answers():
                    return
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"{self.what} did not answer on port {port} within {timeout}s (log: {log})"
                    )
                time.sleep(0.05)
        except BaseException:
            if process.poll() is None:
                process.kill()
            process.wait()
            raise


def log_size(log: Path) -> int:
    """Return the size of `log` (0 if it does not exist): where this start's lines begin."""
    return log.stat().st_size if log.exists() else 0
