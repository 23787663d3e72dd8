"""Downloading named data sets: mirrors, a progress bar, checksums, and atomic writes.

A file is streamed into a temporary file beside its destination and renamed into place only
after its checksum matches, so a partial or corrupt download is never used. Each mirror is
tried in turn; when all fail, the error says where to put the files by hand.
`$VITLAB_DATA_MIRROR` (a base URL) replaces the official addresses: a local mirror for
machines without internet access, and what the tests point at a server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from vitlab.atomic import atomic_path
from vitlab.errors import DataError
from vitlab.terminal import draws_live, progress_console

CHUNK = 1 << 16
TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set: its name, the base URLs that serve it, and its published checksum."""

    name: str
    mirrors: tuple[str, ...]
    md5: str = ""
    sha256: str = ""


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest (sha256, md5, ...) of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def matches_checksum(path: Path, remote: RemoteFile) -> bool:
    """Whether a file on disk has the published checksum (SHA-256 when known, else MD5)."""
    if remote.sha256:
        return file_digest(path, "sha256") == remote.sha256
    return file_digest(path, "md5") == remote.md5


def mirror_urls(remote: RemoteFile) -> list[str]:
    """Where to fetch a file from, in order: $VITLAB_DATA_MIRROR alone when set, else the official mirrors."""
    override = os.environ.get("VITLAB_DATA_MIRROR")
    bases = [override] if override else list(remote.mirrors)
    return [base.rstrip("/") + "/" + remote.name for base in bases]


def _fetch(url: str, tmp: Path, progress: Progress | None) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "vitlab"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response, open(tmp, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        task = progress.add_task(Path(url).name, total=total) if progress else None
        received = 0
        while chunk := response.read(CHUNK):
            out.write(chunk)
            received += len(chunk)
            if progress is not None:
                progress.update(task, completed=received)
        if total is not None and received != total:
            raise urllib.error.URLError(f"connection closed after {received} of {total} bytes")


def download(remote: RemoteFile, folder: Path, show_progress: bool = True) -> Path:
    """The file in `folder`, downloaded and verified if it is not there (or is corrupt) already."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / remote.name
    if target.exists() and matches_checksum(target, remote):
        return target
    failures = [f"{target} on disk does not match the published checksum"] if target.exists() else []
    console = progress_console()
    progress = (
        Progress(
            BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(), transient=True, console=console
        )
        if show_progress and draws_live(console)
        else None
    )
    with progress or _NoProgress():
        for url in mirror_urls(remote):
            try:
                with atomic_path(target, suffix=".part") as partial:
                    _fetch(url, partial, progress)
                    if not matches_checksum(partial, remote):
                        raise ValueError("checksum mismatch")
                return target
            except (urllib.error.URLError, OSError, ValueError) as exc:
                failures.append(f"{url}: {getattr(exc, 'reason', exc)}")
    raise DataError(
        f"could not download {remote.name} ({'; '.join(failures)}); "
        f"put the official file in {folder} by hand, or set VITLAB_DATA_MIRROR to a server that has it"
    )


class _NoProgress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None
