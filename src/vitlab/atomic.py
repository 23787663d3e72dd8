"""Atomic file writes: a reader finds the old file or the new one, never a torn one.

Every file a later command reads back (checkpoints, the run's config, its metrics and facts) is
written here: to a temporary file in the same folder, flushed to disk, then renamed over the
target, with Ctrl-C held until the rename is done.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from vitlab.interrupts import interrupts_deferred


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with interrupts_deferred():
        _write_then_rename(path, payload)


def atomic_write_text(path: Path, text: str) -> None:
    """atomic_write_bytes for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _write_then_rename(path: Path, payload: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; these are ordinary files
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
