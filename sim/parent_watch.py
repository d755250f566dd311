"""Worker processes end when the process that started them dies, however it dies.

Why: a SIGKILLed (or OOM-killed) `vla-data generate` or evaluation cannot close its workers, and
each holds a MuJoCo scene and a GL context (~880 MB). A worker blocked in a long step, or in a
`ProcessPoolExecutor` queue that its own copy of the pipe keeps open, never sees the parent go;
`daemon=True` only helps when the parent exits normally. So every worker calls
`ParentWatch.start` at start-up:

- on Linux, `prctl(PR_SET_PDEATHSIG, SIGKILL)` has the kernel kill it the moment its parent
  dies. The kernel ties this to the parent *thread* that started the worker, so it is only used
  when that was the parent's main thread (which lives as long as the process);
- everywhere (the portable fallback, and the only check where the signal is not used), a daemon
  thread polls `os.getppid()` and exits the worker once it changes: an orphan is re-parented to
  init or a subreaper. A parent that died while the worker was still starting is caught by the
  same comparison.

Workers of a "forkserver" context are children of the fork server, which does not notice the
parent's death while any worker lives (each holds a copy of its liveness pipe), so they wait on
the parent itself: a pidfd on Linux, else by polling `os.kill(pid, 0)`.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
ORPHAN_EXIT_CODE = 128 + signal.SIGKILL  # what a shell reports for a SIGKILLed process


@dataclass(frozen=True)
class ParentWatch:
    """What a worker needs to know about the process that starts it; picklable, so it travels
    with the worker's arguments (or a pool's `initargs`).

    `pid`: the parent. `direct_child`: the worker's OS parent is that process ("spawn" and
    "fork"), not the fork server ("forkserver"). `death_signal`: PR_SET_PDEATHSIG may be used
    (see the module docstring)."""

    pid: int
    direct_child: bool
    death_signal: bool

    @classmethod
    def here(cls, start_method: str) -> ParentWatch:
        """Call in the parent, in the thread that starts the workers, with the start method of
        the multiprocessing context they are started with."""
        direct = start_method != "forkserver"
        main_thread = threading.current_thread() is threading.main_thread()
        # The fork server forks workers from its own main thread: its death may end them too.
        return cls(pid=os.getpid(), direct_child=direct, death_signal=main_thread or not direct)

    def start(self, poll_interval: float = 0.5) -> None:
        """Call first thing in the worker: from now on it ends when its parent does."""
        parent = os.getppid()
        if self.direct_child and parent != self.pid:
            _exit_orphaned(self.pid)  # the parent died while this worker was starting
        if self.death_signal and _set_parent_death_signal() and os.getppid() != parent:
            _exit_orphaned(self.pid)  # it died before the signal was armed
        threading.Thread(
            target=self._watch, args=(parent, poll_interval), name="parent-watch", daemon=True
        ).start()

    def _watch(self, parent: int, poll_interval: float) -> None:
        if self.direct_child:
            while os.getppid() == parent:
                time.sleep(poll_interval)
        else:
            _wait_for_exit(self.pid, poll_interval)
        _exit_orphaned(self.pid)


def _set_parent_death_signal() -> bool:
    """Ask the Linux kernel to SIGKILL this process when its parent dies; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):  # no prctl in this libc: the polling thread still runs
        return False


def _wait_for_exit(pid: int, poll_interval: float) -> None:
    """Return once process `pid` (not our OS parent) has exited."""
    try:
        pidfd = os.pidfd_open(pid)  # Linux >= 5.3: readable once the process exits
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        select.select([pidfd], [], [])
        return
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:  # alive, under another user
            pass
        time.sleep(poll_interval)


def _exit_orphaned(watched_pid: int) -> None:
    """End now, without cleanup: nobody is left to collect results, and an env's close may hang
    on a GL context whose display went away with the parent."""
    try:
        sys.stderr.write(f"worker {os.getpid()}: parent process {watched_pid} is gone; exiting\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr may be a closed pipe
        pass
    os._exit(ORPHAN_EXIT_CODE)
