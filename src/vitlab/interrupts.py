"""Ctrl-C and SIGTERM: writes they cannot cut in half, an interruption reported as one, and processes
of --nproc that end with their launcher.

Imports nothing heavy, so that the command line can set this up before torch loads.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NoReturn

_seen = False


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM until the block ends (main thread only), so a write is never cut in half."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _remembered_interrupt(signum: int, frame: object) -> NoReturn:
    global _seen
    _seen = True
    raise KeyboardInterrupt


def take_interrupts() -> None:
    """Install this process's Ctrl-C handling (main thread; not where a shell set Ctrl-C to be ignored).

    Ctrl-C raises KeyboardInterrupt as Python's own handler does, and is remembered: one that lands
    inside an import can be swallowed there and leave a half-loaded module behind (numpy, say), whose
    next use fails with some other error; see `stopped_by_ctrl_c`.
    """
    global _seen
    _seen = False  # a Ctrl-C an earlier command in this interpreter took is not this one's
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _remembered_interrupt)


def raise_swallowed_interrupt() -> None:
    """Raise KeyboardInterrupt for a Ctrl-C that did not stop the process where it landed (in an import's
    clean-up, say, where Python prints "Exception ignored" and carries on); long loops call this."""
    if _seen:
        raise KeyboardInterrupt


def stopped_by_ctrl_c(exc: BaseException) -> bool:
    """Whether this exception is, or followed, a Ctrl-C (then it is reported as the interruption it is)."""
    return isinstance(exc, KeyboardInterrupt) or _seen


def end_with_parent(parent_pid: int) -> None:
    """Have the kernel end this process with SIGTERM when its parent (the launcher of --nproc) ends, and
    end it now if that already happened; on Linux, a no-op elsewhere.

    A launcher killed outright (SIGKILL, the out-of-memory killer), or stopped while it is still starting
    its processes, cannot stop them itself; they run in sessions of their own, so a Ctrl-C or SIGTERM
    to its process group does not reach them either, and they would train on, unseen.
    """
    import ctypes

    if not sys.platform.startswith("linux"):
        return
    set_parent_death_signal = 1  # PR_SET_PDEATHSIG, <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(set_parent_death_signal, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:  # gone before the line above: no signal will come
        raise KeyboardInterrupt


def remove_left_by_ended_processes(folders: Iterable[Path], writer_pid: Callable[[Path], str]) -> None:
    """Delete each folder whose writer, the process `writer_pid` reads from the folder's name, has ended:
    what a process killed outright (SIGKILL, the out-of-memory killer) could not remove itself. A
    folder whose name holds no pid, or whose writer still runs, stays."""
    import shutil

    for folder in folders:
        pid = writer_pid(folder)
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user's counts: it cannot be signalled, but is there)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
