"""What `make run` keeps in `.data/`, and how the tools beside it (the CLI, `make loadtest`) find a running one.

The launcher (`devstack.launcher`) keeps the embedded servers' data, the admin token, the SECRET_KEY and the
development key in `.data/`, and while it runs writes `.data/servers.env`, one `NAME=value` a line:

    LAUNCHER_PID=<its process id>
    DATABASE_URL=postgresql://...      the servers it runs on (embedded ones may be off their default ports)
    REDIS_URL=redis://...
    API_URL=http://127.0.0.1:8000      where its API answers
    SECRET_KEY_FILE=.../secret-key     where its SECRET_KEY is kept (absent when SECRET_KEY was set)

It deletes the file when it stops; a file naming a process that is gone is ignored. `.data` is relative to the
current directory: the tools run from the checkout, as `make` does.
"""

import os
from pathlib import Path

__all__ = ["DATA", "SECRET_KEY_FILE", "SERVERS_ENV", "read_running", "write_running"]

#: `make run`'s folder, relative to the checkout the tools run from.
DATA = Path(".data")
#: The file, in the data folder, naming a running launcher's servers.
SERVERS_ENV = "servers.env"
#: The file, in the data folder, holding the SECRET_KEY the launcher made (its API keys are sealed with it).
SECRET_KEY_FILE = "secret-key"  # noqa: S105 - a file's name


def write_running(data: Path, values: dict[str, str]) -> Path:
    """Write `values` and this process's id to `data`/servers.env (the launcher, once its servers are up)."""
    path = data / SERVERS_ENV
    lines = [f"LAUNCHER_PID={os.getpid()}", *(f"{name}={value}" for name, value in values.items())]
    path.write_text("".join(line + "\n" for line in lines))
    path.chmod(0o600)  # the URLs may hold passwords
    return path


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def read_running(data: Path = DATA) -> dict[str, str]:
    """Return what the `make run` of `data` wrote to servers.env, or {} when none is running."""
    try:
        text = (data / SERVERS_ENV).read_text()
    except OSError:
        return {}
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if not _alive(values.pop("LAUNCHER_PID", "")):
        return {}
    return values
