"""Each worker's own liveness: a file its drains keep fresh, and `python -m worker.health`, which checks it.

With WORKER_HEARTBEAT_FILE set, the file's modification time is the oldest of the drains' latest completed loops,
so it goes stale as soon as any one drain stops completing loops (frozen, cut off from Redis). A drain retrying a
batch while Postgres is down beats at each try: it is alive, a restart would not end the outage, and every restart
hands its batch over again, one delivery more towards MAX_DELIVERIES (which would dead-letter good entries).
`python -m worker.health` (the compose healthcheck, the Kubernetes liveness probe) exits 1 once the file is older
than WORKER_HEARTBEAT_MAX_AGE_SECONDS, or missing. Unlike arq's health key, shared by every worker of a queue, it
speaks for this worker only.
"""

import contextlib
import os
import sys
import time
from pathlib import Path

from shared.settings import get_settings

#: The file is rewritten at most this often (its time is what matters, and a few seconds of slack are nothing).
WRITE_INTERVAL_SECONDS = 1.0


class Heartbeat:
    """The heartbeat file of one worker process with `drains` drain loops."""

    def __init__(self, path: Path, drains: int) -> None:
        self.path = path
        self._latest: list[float | None] = [None] * drains
        self._written = 0.0
        # a file left by an earlier run of this container says nothing about this one
        self.path.unlink(missing_ok=True)

    def beat(self, drain: int) -> None:
        """Record that drain number `drain` completed a loop; date the file by the drain that is furthest behind."""
        now = time.time()
        self._latest[drain] = now
        if None in self._latest or now - self._written < WRITE_INTERVAL_SECONDS:
            return
        oldest = min(beat for beat in self._latest if beat is not None)
        with contextlib.suppress(OSError):  # a full or read-only disk must not stop the drain: the check fails
            self.path.touch()
            os.utime(self.path, (oldest, oldest))
            self._written = now


def age_seconds(path: Path) -> float | None:
    """Return how long ago the heartbeat file was dated, or None if there is none."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def main() -> int:
    """Return 0 when this worker's drains all completed a loop within WORKER_HEARTBEAT_MAX_AGE_SECONDS, else 1."""
    settings = get_settings()
    if not settings.worker_heartbeat_file:
        print("WORKER_HEARTBEAT_FILE is not set: the worker keeps no heartbeat to check", file=sys.stderr)
        return 1
    path = Path(settings.worker_heartbeat_file)
    age = age_seconds(path)
    limit = settings.worker_heartbeat_max_age_seconds
    if age is None:
        print(f"unhealthy: no heartbeat in {path} (the drains have not completed a loop yet)", file=sys.stderr)
        return 1
    if age > limit:
        print(f"unhealthy: a drain last completed a loop {age:.0f}s ago (limit {limit:.0f}s)", file=sys.stderr)
        return 1
    print(f"healthy: every drain completed a loop within {max(age, 0):.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
