"""Reading the official CIFAR-10 / CIFAR-100 "python version" archives without trusting pickle.

The batches inside are pickles. They are read with an unpickler that can build only plain
containers, bytes, strings, numbers and numpy arrays: any other global (a function, a class)
in the stream is refused, so a tampered archive cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from vitlab.errors import DataError

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 2 pickles spell bytes
}

LAYOUT = {
    # format: (folder in the archive, train members, test member, meta member, label key, names key)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def safe_unpickle(payload: bytes) -> Any:
    """Unpickle a CIFAR batch: containers, bytes, numbers and numpy arrays only."""
    return _ArraysOnlyUnpickler(io.BytesIO(payload), encoding="bytes").load()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _get(mapping: dict, key: str) -> Any:
    for candidate in (key.encode(), key):
        if candidate in mapping:
            return mapping[candidate]
    raise KeyError(key)


def read_cifar_archive(path: Path, kind: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 images N x 3 x 32 x 32, int64 labels, class names) of one split of a CIFAR archive."""
    folder, train_members, test_member, meta_member, label_key, names_key = LAYOUT[kind]
    members = train_members if split == "train" else [test_member]
    try:
        with tarfile.open(path, "r:gz") as archive:

            def read(member: str) -> dict:
                handle = archive.extractfile(f"{folder}/{member}")
                if handle is None:
                    raise KeyError(member)
                return safe_unpickle(handle.read())

            batches = [read(member) for member in members]
            meta = read(meta_member)
        images = np.concatenate([np.asarray(_get(batch, "data"), dtype=np.uint8) for batch in batches])
        labels = np.concatenate([np.asarray(_get(batch, label_key), dtype=np.int64) for batch in batches])
        names = [_text(name) for name in _get(meta, names_key)]
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError, KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path} is not a readable {kind} python archive ({type(exc).__name__}: {exc})") from None
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or len(images) != len(labels):
        raise DataError(f"{path}: {kind} batches have an unexpected shape {images.shape}")
    return images.reshape(-1, 3, 32, 32), labels, names
