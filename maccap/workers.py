"""Helpers for worker processes: how many cores this process may use, and dying with the parent.

A killed runner must take its workers along (they hold locks and write into the same directories),
as a killed single-process runner takes its runs along: `die_with_parent` in a worker's initialiser
does that without any platform-specific call.
"""

from __future__ import annotations

import os
import signal
import threading
import time


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def die_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """SIGKILL this process soon after `parent_pid` is gone (a daemon thread polls the parent pid)."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
