"""Children of the command that end with it, even when it is killed (kill -9), which nothing in
it can catch: a dashboard left behind would keep its port and serve a pipeline that is gone.

The parent names itself in the child's environment (`parent_environment`); the child, first
thing, asks to end when that process does (`end_with_parent`). On Linux the kernel sends it
SIGTERM then (prctl PR_SET_PDEATHSIG, through ctypes); elsewhere a thread of the child watches
its parent's pid. The child asks, not the parent through `preexec_fn`, which may deadlock in a
parent with threads (the pipeline's). The kernel's "parent" is the thread that started the
child: start one from a thread that lives as long as it should (the main one).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PARENT_ENV = "TOTES_PARENT_PID"
_PR_SET_PDEATHSIG = 1
_WATCH_SECONDS = 0.5


def parent_environment() -> dict[str, str]:
    """What a child's environment adds so that it ends with this process."""
    return {PARENT_ENV: str(os.getpid())}


def end_with_parent(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """End this process (SIGTERM) when the process named in PARENT_ENV ends; True when one was
    named. The variable is taken out, so children of this process do not watch it too."""
    value = environ.pop(PARENT_ENV, "")
    if not value.isdigit():
        return False
    parent = int(value)
    if not _ask_the_kernel(signal.SIGTERM):
        threading.Thread(target=_watch, args=(parent,), name="parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it ended before we asked
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def _ask_the_kernel(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    return prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_WATCH_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)
