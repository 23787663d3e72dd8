"""The fast path: uint8 images in memory, batches drawn by index, normalised on the training device."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A small CPU tensor (random draws, indices, constants) on `device`, without making the host wait.

    PyTorch copies ordinary memory to a GPU only after all the work queued there is done, so a step
    that did so could not be queued while the one before it ran; a copy from pinned memory is queued
    like any kernel (pinned blocks are cached, and kept until their copy is done)."""
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, C, H, W), or float in [0, 1], -> float32 with each channel shifted by mean, divided by std."""
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    mean_t = to_device(torch.tensor(mean, dtype=torch.float32), images.device).view(1, -1, 1, 1)
    std_t = to_device(torch.tensor(std, dtype=torch.float32), images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def batch_indices(
    num_examples: int,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[torch.Tensor]:
    """Index tensors for one pass over the data; a shuffled pass is a permutation drawn from `generator`."""
    order = torch.randperm(num_examples, generator=generator) if shuffle else torch.arange(num_examples)
    stop = num_examples - num_examples % batch_size if drop_last else num_examples
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def num_batches(num_examples: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches `batch_indices` yields."""
    return num_examples // batch_size if drop_last else -(-num_examples // batch_size)


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Repeat a grey channel to 3, or average 3 colour channels to 1 (luma weights), as the model expects."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1)
    if have == 3 and channels == 1:
        weights = to_device(torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype), images.device).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1, keepdim=True)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def to_model_input(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float], size: int, channels: int
) -> torch.Tensor:
    """uint8 or [0, 1] float images -> normalised float at the model's size and channel count."""
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    if images.shape[-1] != size or images.shape[-2] != size:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    images = match_channels(images, channels)
    if len(mean) != channels:  # statistics of a 1-channel data set used for a 3-channel model, or back
        mean, std = [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels
    return normalize(images, mean, std)
