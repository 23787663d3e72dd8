"""One entry point for every data source: a named data set or an image folder, as in-memory splits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vitlab.config import DataConfig
from vitlab.data.folders import (
    class_folders,
    describe_other_files,
    describe_skipped,
    folder_files,
    folder_state,
    is_image_folder,
    load_folder_split,
    split_roots,
)
from vitlab.data.sources import ImageDataset, dataset_info, evenly_spread, load_split
from vitlab.errors import DataError


@dataclass
class Splits:
    """Train and test splits with the class names and the normalisation statistics to use."""

    name: str
    train: ImageDataset
    test: ImageDataset
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    notes: list[str]
    folder_state: str = ""  # an image folder's state (folders.FolderState): it changes with any file in it


def input_shape(dataset: str) -> tuple[int, int]:
    """(channels, classes) a model for this data set needs, without decoding any image."""
    if is_image_folder(dataset):
        train_root, _ = split_roots(Path(dataset).expanduser())
        return 3, len(class_folders(train_root))
    info = dataset_info(dataset)
    return info.channels, len(info.class_names)


def channel_statistics(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, in [0, 1] units."""
    # Up to 20,000 images spread over the whole set (folders come sorted by class), 500 at a time,
    # so a memory-mapped folder is never read into memory whole.
    picks = evenly_spread(len(images), 20_000)
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in picks.split(500):
        pixels = images[chunk].double().div_(255.0).transpose(0, 1).flatten(1)
        total += pixels.sum(dim=1)
        squares += pixels.square().sum(dim=1)
    count = len(picks) * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp(min=0).sqrt().clamp(min=1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def open_dataset(
    data: DataConfig, channels: int, size: int, seed: int = 0, splits: tuple[str, ...] = ("train", "test")
) -> Splits:
    """Load the splits a run needs (subsets applied); image folders are decoded at the model's size."""
    empty = ImageDataset(torch.zeros(0, channels, size, size, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), ())
    if is_image_folder(data.dataset):
        listing = folder_files(data.dataset, data.test_fraction, seed)
        source = folder_state(data.dataset, listing.train + listing.test)
        loaded, notes = {}, []
        if listing.others:
            notes.append(describe_other_files(listing.others))
        for split, files in (("train", listing.train), ("test", listing.test)):
            if split not in splits:
                continue
            part = load_folder_split(files, channels, size, source=source, split=split)
            if files and len(part.labels) == 0:
                raise DataError(f"no {split} image in {data.dataset} could be read: {describe_skipped(part.skipped)}")
            if part.skipped:
                notes.append(f"{split}: {describe_skipped(part.skipped)}")
            loaded[split] = ImageDataset(part.images, part.labels, listing.class_names)
        train = loaded.get("train", empty)
        mean, std = channel_statistics(train.images) if len(train) else ((0.5,) * channels, (0.25,) * channels)
        result = Splits(
            data.dataset, train, loaded.get("test", empty), listing.class_names, mean, std, notes, source.state
        )
    else:
        info = dataset_info(data.dataset)
        parts = {
            split: load_split(info.name, split, data.data_dir) if split in splits else empty
            for split in ("train", "test")
        }
        names = next((p.class_names for p in parts.values() if p.class_names), info.class_names)
        result = Splits(info.name, parts["train"], parts["test"], names, info.mean, info.std, [])
    result.train = result.train.subset(data.train_subset)
    result.test = result.test.subset(data.test_subset)
    return result
