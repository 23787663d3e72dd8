"""Named data sets: where their files are, download and checksum verification, reading them into uint8 tensors.

MNIST ships inside the package (the four official IDX files, CC BY-SA 3.0, LeCun, Cortes and
Burges), so the main job never needs the network. Fashion-MNIST, CIFAR-10 and CIFAR-100 are
read from `data.data_dir`, else from $VITLAB_DATA/<name> (default ~/.cache/vitlab/<name>),
and downloaded there on first use from their official addresses.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vitlab.data.cifar import read_cifar_archive
from vitlab.data.download import RemoteFile, download, matches_checksum
from vitlab.errors import DataError

PACKAGED_MNIST = Path(__file__).parent / "mnist"

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
CIFAR_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)


def _files(mirrors: tuple[str, ...], *entries: tuple[str, str]) -> dict[str, RemoteFile]:
    return {name: RemoteFile(name, mirrors, sha256=digest) for name, digest in entries}


@dataclass(frozen=True)
class DatasetInfo:
    """What vitlab knows about a named data set: shape, classes, normalisation and file checksums."""

    name: str
    image_size: int
    channels: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files: dict[str, RemoteFile]
    format: str = "idx"  # or cifar10 / cifar100: the official python archive

    @property
    def sha256(self) -> dict[str, str]:
        """Published SHA-256 of each file (where known)."""
        return {name: remote.sha256 for name, remote in self.files.items()}


DATASETS = {
    "mnist": DatasetInfo(
        name="mnist",
        image_size=28,
        channels=1,
        class_names=tuple(str(digit) for digit in range(10)),
        mean=(0.1307,),
        std=(0.3081,),
        files=_files(
            MNIST_MIRRORS,
            ("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            ("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            ("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            ("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        ),
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        image_size=28,
        channels=1,
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mean=(0.2860,),
        std=(0.3530,),
        files=_files(
            FASHION_MIRRORS,
            ("train-images-idx3-ubyte.gz", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            ("train-labels-idx1-ubyte.gz", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            ("t10k-images-idx3-ubyte.gz", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            ("t10k-labels-idx1-ubyte.gz", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        ),
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        image_size=32,
        channels=3,
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        files={
            "cifar-10-python.tar.gz": RemoteFile(
                "cifar-10-python.tar.gz", CIFAR_MIRRORS, md5="c58f30108f718f92721af3b95e74349a"
            )
        },
        format="cifar10",
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        image_size=32,
        channels=3,
        class_names=tuple(f"class_{i}" for i in range(100)),  # replaced by the archive's own names on load
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        files={
            "cifar-100-python.tar.gz": RemoteFile(
                "cifar-100-python.tar.gz", CIFAR_MIRRORS, md5="eb9058c3a382ffc7106e4002c42a8d85"
            )
        },
        format="cifar100",
    ),
}


def evenly_spread(total: int, count: int) -> torch.Tensor:
    """`count` distinct indices (at most `total`) spread evenly from the first item to the last."""
    return torch.linspace(0, total - 1, min(total, count)).round().long()


@dataclass
class ImageDataset:
    """A split held in memory: uint8 images (N, C, H, W), int64 labels (N,), and class names."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, count: int) -> ImageDataset:
        """`count` examples spread evenly over the split (all of them when count is 0 or the split's size or more).

        Spread, not the first ones: an image folder lists its files class by class, so its first 512 of
        CIFAR-10's 50,000 were all airplanes, and a quick run scored 98.8% by always answering airplane.
        """
        if not count or count >= len(self):
            return self
        picks = evenly_spread(len(self), count)
        return ImageDataset(self.images[picks], self.labels[picks], self.class_names)


def dataset_info(name: str) -> DatasetInfo:
    """Look up a named data set, with a clear error listing the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(
            f"unknown dataset {name!r}; known: {', '.join(DATASETS)}, or the path of an image folder"
        ) from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read a (possibly gzip-compressed) IDX file of unsigned bytes into an array of its declared shape."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} is not a readable gzip file ({exc}); delete it and fetch it again") from None
    if len(raw) < 4:
        raise DataError(f"{path} is too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise DataError(f"{path} does not start with an IDX magic number for unsigned bytes")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its IDX header")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{path} holds {len(raw) - header} bytes of data but its header declares {expected}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def dataset_folder(name: str, data_dir: str = "") -> Path:
    """Where a named data set's files are: data_dir, else the packaged copy (MNIST) or $VITLAB_DATA/name."""
    if data_dir:
        return Path(data_dir).expanduser()
    if name == "mnist":
        return PACKAGED_MNIST
    root = Path(os.environ.get("VITLAB_DATA", Path.home() / ".cache" / "vitlab"))
    return root / name


def ensure_file(info: DatasetInfo, filename: str, folder: Path, verify: bool = True) -> Path:
    """A data set file on disk with its published checksum: downloaded if absent or corrupt (not for MNIST)."""
    path = folder / filename
    if folder == PACKAGED_MNIST:
        if verify and (not path.exists() or not matches_checksum(path, info.files[filename])):
            raise DataError(f"the packaged MNIST file {path} is missing or damaged; reinstall vitlab")
        return path
    if path.exists() and (not verify or matches_checksum(path, info.files[filename])):
        return path
    return download(info.files[filename], folder)


def load_split(name: str, split: str, data_dir: str = "", verify: bool = True) -> ImageDataset:
    """Load the 'train' or 'test' split of a named data set as uint8 tensors, verifying checksums."""
    info = dataset_info(name)
    if split not in IDX_FILES:
        raise DataError(f"unknown split {split!r}; use train or test")
    folder = dataset_folder(name, data_dir)
    if info.format != "idx":
        archive = ensure_file(info, next(iter(info.files)), folder, verify)
        images, labels, names = read_cifar_archive(archive, info.format, split)
        return ImageDataset(torch.from_numpy(images.copy()), torch.from_numpy(labels), tuple(names))
    images, labels = (read_idx(ensure_file(info, filename, folder, verify)) for filename in IDX_FILES[split])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{name} {split}: images {images.shape} and labels {labels.shape} do not pair up")
    if labels.max(initial=0) >= len(info.class_names):
        raise DataError(f"{name} {split}: a label is out of range for {len(info.class_names)} classes")
    return ImageDataset(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=info.class_names,
    )
