"""Atomic file writes: a reader finds the old file or the new one, never a torn one.

Every file a later command reads back (checkpoints, the run's config, its metrics and facts, exported
models, downloads) is written here: to a temporary file in the same folder, flushed to disk, then
renamed over the target; a write that fails or is interrupted leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vitlab.interrupts import interrupts_deferred


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` through `atomic_path`, with Ctrl-C held until the rename is done."""
    with interrupts_deferred(), atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(payload)


def atomic_write_text(path: Path, text: str) -> None:
    """atomic_write_bytes for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside `path`, for writers that want a file name (an exporter, a download):
    flushed to disk and renamed onto `path` if the block succeeds, removed if it does not."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as exc:  # name the file asked for, not the temporary one nobody knows of
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp creates 0600; these are ordinary files
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        with interrupts_deferred():
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
