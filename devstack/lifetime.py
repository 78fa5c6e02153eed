"""Child processes that end with the process that started them, even when it is killed with SIGKILL.

`die_with_parent` asks the kernel (Linux: `prctl(PR_SET_PDEATHSIG)`, between fork and exec) to send the child a
signal of our choice when its parent dies; it holds across exec and `unshare --user` (for programs that are not
set-user-ID). Elsewhere it is a no-op. The signal comes when the *thread* that started the child ends, so start
long-lived children from the main thread.
"""

import ctypes
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """Return a `preexec_fn` for `subprocess.Popen` that has the child receive `sig` when this process dies.

    None where the platform has no such thing (not Linux): pass it as is, `Popen` accepts None.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), sig)

    return preexec
