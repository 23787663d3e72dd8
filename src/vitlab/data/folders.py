"""Image folders (`root/<class>/*.png|jpg|...`, optionally under `train/` and `test/` or `val/`).

Images are decoded once, in worker processes, resized to the model's input and kept as uint8.
Decoded images stream to a file on disk as they arrive and are read back through a memory map,
so memory stays bounded whatever the folder's size: a folder larger than RAM trains, with the
operating system paging images in and out. The file is the cache (raw uint8 rows, .npy labels
and JSON, never pickles), kept under a key made from the folder's file list, sizes and times, so
later runs skip decoding. Unreadable files are skipped and reported, never fatal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from vitlab.cores import available_cores
from vitlab.data.images import IMAGE_FORMATS, IMAGE_SUFFIXES, load_image
from vitlab.errors import DataError, ImageError
from vitlab.interrupts import remove_left_by_ended_processes
from vitlab.terminal import counting_bar

TEST_FOLDER_NAMES = ("test", "val")
# Archives people pass for the folder they hold (the CIFAR-10 JPEG copy ships as a .tar.gz).
ARCHIVE_SUFFIXES = re.compile(r"\.(zip|tar|tgz|tar\.(gz|bz2|xz|zst)|7z|rar)$", re.IGNORECASE)
TEMPORARY_ENTRY = ".tmp"  # in the name of a cache entry still being written (followed by the writer's pid)


@dataclass
class FolderSplit:
    """Decoded images of one split, with the files that could not be read."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    skipped: list[str]


def cache_root() -> Path:
    """Where decoded folders are cached: $VITLAB_CACHE, else ~/.cache/vitlab."""
    return Path(os.environ.get("VITLAB_CACHE", Path.home() / ".cache" / "vitlab"))


def is_image_folder(name: str) -> bool:
    """Whether a --dataset value names a folder on disk rather than a known data set."""
    return os.sep in name or name.startswith(".") or Path(name).is_dir()


def same_folder(first: str, second: str) -> bool:
    """Whether two --dataset values name the same image folder (not a named data set)."""
    if not (first and second and is_image_folder(first) and is_image_folder(second)):
        return False
    return Path(first).expanduser().resolve() == Path(second).expanduser().resolve()


def class_folders(root: Path) -> list[Path]:
    """The class sub-folders of a split folder, sorted by name; errors if there are none."""
    if root.is_file():
        unpack = " (an archive: unpack it and pass the folder)" if ARCHIVE_SUFFIXES.search(root.name) else ""
        raise DataError(f"{root} is a file, not a folder of class folders{unpack}")
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class folders; expected {root}/<class>/<image files>")
    return classes


def split_roots(root: Path) -> tuple[Path, Path | None]:
    """(train root, test root) when the folder has train/ and test/ (or val/), else (root, None)."""
    train = root / "train"
    for name in TEST_FOLDER_NAMES:
        if train.is_dir() and (root / name).is_dir():
            return train, root / name
    return root, None


def list_files(root: Path, class_names: list[str]) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, label) of every image file under root/<class>/, and the other files there (files_under)."""
    files, others = [], []
    for label, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"{root} lacks the class folder {name!r} that the training split has")
        images, not_images = files_under(folder)
        files += [(path, label) for path in images]
        others += not_images
    return files, others


def files_under(folder: Path) -> tuple[list[str], list[str]]:
    """(image files, other files) under folder, each in sorted order: hidden files and folders
    (.DS_Store, macOS's ._ copies, .thumbnails/, ...) passed over, symlinked folders followed but no
    loop twice."""
    images, others = [], []
    seen_dirs: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        stat = os.stat(dirpath)
        if (stat.st_dev, stat.st_ino) in seen_dirs:  # a symlink loop: walk each real folder once
            dirnames.clear()
            continue
        seen_dirs.add((stat.st_dev, stat.st_ino))
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                is_image = Path(name).suffix.lower() in IMAGE_SUFFIXES
                (images if is_image else others).append(os.path.join(dirpath, name))
    return images, others


def describe_other_files(others: list[str]) -> str:
    """'N file(s) ... left out (first: a, b, c)': what a folder held beside its images."""
    return f"{len(others)} file(s) not in {IMAGE_FORMATS} format left out (first: {', '.join(others[:3])})"


def _decode(task: tuple[str, int, int]) -> np.ndarray | str:
    path, channels, size = task
    try:
        return load_image(path, channels, size).numpy()
    except ImageError as exc:
        return str(exc)


def _decoded(tasks: list[tuple[str, int, int]], workers: int) -> Iterator[np.ndarray | str]:
    """Each task's image (or error message), in order, decoded in worker processes when it pays."""
    if workers > 1 and len(tasks) > 256:
        pool = ProcessPoolExecutor(max_workers=workers)
        try:
            yield from pool.map(_decode, tasks, chunksize=max(1, min(256, len(tasks) // (workers * 16))))
        finally:  # a reader that stops early (an unreadable file for predict, Ctrl-C) leaves the rest undone
            pool.shutdown(cancel_futures=True)
    else:
        yield from map(_decode, tasks)


def decoded_images(paths: list[str], channels: int, size: int, workers: int) -> Iterator[np.ndarray | str]:
    """Each file as uint8 (channels, size, size), or the one-line reason it could not be read, in order;
    decoded in `workers` processes when there are enough files, under a progress bar from 2,000 files."""
    with counting_bar("decoding images", len(paths)) as advance:
        for item in _decoded([(path, channels, size) for path in paths], workers):
            advance()  # before handing the item over: a zip() over the paths stops at the last one
            yield item


def map_images(path: Path, count: int, channels: int, size: int) -> torch.Tensor:
    """The first `count` images of a raw uint8 file, memory-mapped (copy-on-write: the file never changes)."""
    if count == 0:
        return torch.zeros((0, channels, size, size), dtype=torch.uint8)
    return torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", shape=(count, channels, size, size)))


def decode_files(
    files: list[tuple[str, int]], channels: int, size: int, workers: int, target: Path
) -> tuple[int, list[int], list[str]]:
    """Decode files into the raw uint8 file `target`, one image after another: (images written, labels, skipped).

    Only labels and skipped paths stay in memory; a full disk raises OSError from the write.
    """
    labels: list[int] = []
    skipped: list[str] = []
    with open(target, "wb") as handle:
        for (path, label), item in zip(files, decoded_images([path for path, _ in files], channels, size, workers)):
            if isinstance(item, str):
                skipped.append(path)
            else:
                handle.write(np.ascontiguousarray(item, dtype=np.uint8).tobytes())
                labels.append(label)
    return len(labels), labels, skipped


def _cache_key(files: list[tuple[str, int]], channels: int, size: int) -> str:
    digest = hashlib.sha256(f"v2 {channels} {size}\n".encode())
    for path, label in files:
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()[:24]


def _decode_into_cache(
    folder: Path,
    files: list[tuple[str, int]],
    channels: int,
    size: int,
    workers: int,
    source: FolderState | None,
    split: str = "",
) -> None:
    """Decode into a temporary folder beside the cache entry, then rename it into place.

    The index also records the image folder, the state of it the files came from and the split they
    are, so that `vitlab cache` can say what each entry is, and a change to the folder can retire the
    entries it outdates."""
    tmp = folder.with_name(folder.name + f"{TEMPORARY_ENTRY}{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        count, labels, skipped = decode_files(files, channels, size, workers, tmp / "images.u8")
        np.save(tmp / "labels.npy", np.asarray(labels, dtype=np.int64), allow_pickle=False)
        index = {"count": count, "skipped": skipped, "channels": channels, "size": size, "split": split}
        if source is not None:
            index |= {"folder": source.root, "folder_state": source.state}
        (tmp / "index.json").write_text(json.dumps(index))
        tmp.rename(folder)
    finally:
        # Whatever failed (a full disk, or another process caching the same folder first),
        # nothing half-written stays behind to be read later.
        shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(folder: Path, channels: int, size: int) -> FolderSplit | None:
    try:
        index = json.loads((folder / "index.json").read_text())
        labels = np.load(folder / "labels.npy", allow_pickle=False)
        count, skipped = int(index["count"]), list(index["skipped"])
        if len(labels) != count or (folder / "images.u8").stat().st_size < count * channels * size * size:
            return None  # damaged: decode again
        images = map_images(folder / "images.u8", count, channels, size)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or damaged: decode again
    with contextlib.suppress(OSError):  # when it was last used, for `vitlab cache`; a read-only cache still reads
        os.utime(folder / "index.json")
    return FolderSplit(images, torch.from_numpy(labels), (), skipped)


def _decode_uncached(files: list[tuple[str, int]], channels: int, size: int, workers: int) -> FolderSplit:
    """Decode into an anonymous temporary file: still memory-mapped, gone when the run ends."""
    try:
        with tempfile.NamedTemporaryFile(prefix="vitlab-images-", suffix=".u8") as handle:
            count, labels, skipped = decode_files(files, channels, size, workers, Path(handle.name))
            images = map_images(Path(handle.name), count, channels, size)  # the mapping outlives the file's name
    except OSError as exc:
        raise DataError(
            f"no room for the decoded images in {tempfile.gettempdir()} ({exc}); free some disk space"
        ) from exc
    return FolderSplit(images, torch.tensor(labels, dtype=torch.int64), (), skipped)


@dataclass(frozen=True)
class FolderState:
    """An image folder (absolute path) and a key of its state: every image file's name, size and time."""

    root: str
    state: str


def folder_state(root: str | Path, files: list[tuple[str, int]] | None = None) -> FolderState:
    """The image folder as it is now: its train and test files together, whatever the split (`files`
    when they have just been listed)."""
    if files is None:
        listing = folder_files(root)
        files = listing.train + listing.test
    return FolderState(str(Path(root).expanduser().resolve()), _cache_key(sorted(files), 0, 0))


def load_folder_split(
    files: list[tuple[str, int]],
    channels: int,
    size: int,
    use_cache: bool = True,
    workers: int | None = None,
    source: FolderState | None = None,
    split: str = "",
) -> FolderSplit:
    """Decoded images of these files (memory-mapped), from the cache when the folder has not changed.

    `source`, the folder the files are from, is recorded with a new cache entry, with the `split`
    ('train', 'test') they are; the entries decoded from an earlier state of that folder are then
    deleted, as no run would read them again."""
    workers = workers or available_cores()
    if not use_cache:
        return _decode_uncached(files, channels, size, workers)
    folder = cache_root() / "folders" / _cache_key(files, channels, size)
    cached = _read_cache(folder, channels, size)
    if cached is not None:
        return cached
    # An entry that is there but unreadable was damaged after it was renamed into place: replaced below,
    # since the rename cannot land on a folder that is not empty.
    shutil.rmtree(folder, ignore_errors=True)
    try:
        _decode_into_cache(folder, files, channels, size, workers, source, split)
    except OSError as exc:  # a full or read-only cache disk costs the cache, not the run
        cached = _read_cache(folder, channels, size)  # unless another process cached the same folder first
        if cached is not None:
            return cached
        print(
            f"vitlab: warning: could not cache decoded images in {folder.parent} ({exc}); decoding without a cache",
            file=sys.stderr,
        )
        return _decode_uncached(files, channels, size, workers)
    cached = _read_cache(folder, channels, size)
    if cached is None:
        raise DataError(f"the decoded-image cache {folder} could not be read back just after writing it")
    if source is not None:
        for entry in cache_entries(of_folder=source):
            if entry.outdated:
                shutil.rmtree(entry.path, ignore_errors=True)
    return cached


@dataclass
class CacheEntry:
    """One decoded split in the cache (see `vitlab cache`)."""

    path: Path
    folder: str  # what it was decoded from; "" for an entry written before vitlab recorded it
    images: int
    split: str  # 'train' or 'test': what it was decoded as (the same files may be another run's other split)
    shape: str  # channels x size x size, or "" when not recorded
    bytes: int
    last_used: float  # seconds since the epoch
    outdated: bool | None  # its folder is there but has changed since: no run will read this entry again


def cache_entries(of_folder: FolderState | None = None, judge: bool = True) -> list[CacheEntry]:
    """The decoded splits under cache_root(), most recently used first (entries still being written left out);
    with `of_folder`, only that folder's, judged against that state of it without listing it again.

    An entry is outdated when its folder's state differs from the current one. A folder that is not there
    may be on a drive not mounted now: its entries are not called outdated. Without `judge`, no folder is
    listed again and `outdated` is None.
    """
    states = {of_folder.root: of_folder.state} if of_folder else {}

    def state_now(folder: str) -> str | None:
        if folder not in states:
            try:
                states[folder] = folder_state(folder).state if Path(folder).is_dir() else None
            except DataError:  # no class folders or no images any more
                states[folder] = ""
            except OSError:  # unreadable now: nothing known
                states[folder] = None
        return states[folder]

    base = cache_root() / "folders"
    entries = []
    for path in sorted(base.iterdir()) if base.is_dir() else []:
        if not path.is_dir() or TEMPORARY_ENTRY in path.name:
            continue
        try:
            index = json.loads((path / "index.json").read_text())
        except (OSError, ValueError):
            index = {}  # damaged: the next run that wants it decodes again
        folder, channels, size = index.get("folder", ""), index.get("channels"), index.get("size")
        if of_folder and folder != of_folder.root:
            continue
        try:
            last_used = (path / "index.json" if index else path).stat().st_mtime
            size_on_disk = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        except OSError:  # deleted meanwhile by another run
            continue
        now = state_now(folder) if folder and judge else None
        outdated = (now is not None and now != index.get("folder_state")) if judge else None
        entries.append(
            CacheEntry(
                path=path,
                folder=folder,
                images=int(index.get("count", 0)),
                split=str(index.get("split", "")),
                shape=f"{channels}x{size}x{size}" if channels else "",
                bytes=size_on_disk,
                last_used=last_used,
                outdated=outdated,
            )
        )
    return sorted(entries, key=lambda entry: entry.last_used, reverse=True)


def clear_cache() -> list[CacheEntry]:
    """Delete every decoded split in the cache, and what a writer that was killed left half-written (not
    what a live process is writing); the finished entries deleted."""
    entries = cache_entries(judge=False)  # all go, outdated or not: no folder need be listed again
    for entry in entries:
        shutil.rmtree(entry.path, ignore_errors=True)
    base = cache_root() / "folders"
    half_written = base.glob(f"*{TEMPORARY_ENTRY}*") if base.is_dir() else []
    remove_left_by_ended_processes(half_written, lambda path: path.name.rpartition(TEMPORARY_ENTRY)[2])
    return entries


def stratified_split(files: list[tuple[str, int]], test_fraction: float, seed: int) -> tuple[list, list]:
    """Split (path, label) pairs so each class keeps the same share in train and test."""
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    labels = sorted({label for _, label in files})
    for label in labels:
        members = [item for item in files if item[1] == label]
        order = torch.randperm(len(members), generator=generator).tolist()
        cut = int(round(len(members) * test_fraction))
        test += [members[i] for i in order[:cut]]
        train += [members[i] for i in order[cut:]]
    return train, test


class FolderFiles(NamedTuple):
    """An image folder's files: (path, label) of its training and test images, its class names, and the
    other files in its class folders, which are not images (files_under)."""

    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    class_names: tuple[str, ...]
    others: list[str]


def folder_files(root: str | Path, test_fraction: float = 0.2, seed: int = 0) -> FolderFiles:
    """The files of an image folder, split into training and test images (stratified_split when it has
    no test/ or val/ folder)."""
    root = Path(root).expanduser()
    train_root, test_root = split_roots(root)
    class_names = [p.name for p in class_folders(train_root)]
    if len(class_names) < 2:
        raise DataError(
            f"{train_root} has one class folder ({class_names[0]}); a classifier needs two or more, as "
            f"{train_root}/<class>/<image files>"
        )
    train_files, others = list_files(train_root, class_names)
    empty = [name for label, name in enumerate(class_names) if not any(lab == label for _, lab in train_files)]
    if empty:
        raise DataError(f"class folder(s) with no images in {train_root}: {', '.join(empty[:5])}")
    if test_root is not None:
        extra = sorted({p.name for p in class_folders(test_root)} - set(class_names))
        if extra:
            names = ", ".join(repr(name) for name in extra[:5])
            raise DataError(f"{test_root} has class folder(s) {names} that the training split {train_root} lacks")
        test_files, test_others = list_files(test_root, class_names)
        others += test_others
    else:
        train_files, test_files = stratified_split(train_files, test_fraction, seed)
    return FolderFiles(train_files, test_files, tuple(class_names), others)


def describe_skipped(skipped: list[str]) -> str:
    """'N unreadable files skipped (first: a, b, c)'."""
    return f"{len(skipped)} unreadable file(s) skipped (first: {', '.join(skipped[:3])})"
