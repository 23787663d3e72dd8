"""Batched augmentations that run on the training device, one random draw per image."""

from __future__ import annotations

import functools
import importlib.util
import math

import torch
import torch.nn.functional as F

from vitlab.config import DataConfig
from vitlab.data.tensors import to_device
from vitlab.errors import ConfigError


def random_affine(
    images: torch.Tensor,
    *,
    degrees: float,
    scale: tuple[float, float],
    translate: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rotate by up to ±degrees, zoom by a factor in `scale`, shift by up to ±translate of the side.

    Images are float (N, C, H, W) in [0, 1] before normalisation, so the zero fill outside
    the image matches a black background (as in MNIST).
    """
    batch = images.shape[0]
    device = images.device
    angle = _uniform(-math.radians(degrees), math.radians(degrees), (batch,), generator, device)
    # affine_grid maps output coordinates to input coordinates, so zooming in by s divides by s.
    inverse_scale = 1.0 / _uniform(scale[0], scale[1], (batch,), generator, device)
    shift = _uniform(-2 * translate, 2 * translate, (batch, 2), generator, device)  # grid coordinates span [-1, 1]
    cos, sin = torch.cos(angle) * inverse_scale, torch.sin(angle) * inverse_scale

    def pixel_centres(side: int) -> torch.Tensor:  # in [-1, 1]
        return (torch.arange(side, device=device, dtype=images.dtype) * 2 + 1) / side - 1

    # The sampling grid F.affine_grid would build (align_corners=False) from theta = [[cos, -sin, shift_x],
    # [sin, cos, shift_y]], written as broadcast products: affine_grid's batched 3x2 matrix products
    # took 1 ms of a 256-image MNIST batch, 5x what these do.
    height, width = images.shape[-2:]
    xs, ys = pixel_centres(width), pixel_centres(height)[:, None]
    cos, sin, shift_x, shift_y = (t.to(images.dtype)[:, None, None] for t in (cos, sin, shift[:, 0], shift[:, 1]))
    grid = torch.stack([cos * xs - sin * ys + shift_x, sin * xs + cos * ys + shift_y], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _uniform(
    low: float, high: float, shape: tuple[int, ...], generator: torch.Generator | None, device
) -> torch.Tensor:
    return to_device(low + (high - low) * torch.rand(*shape, generator=generator), device)


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by `padding` on every side, then cut a window of the original size at a random offset per image."""
    if padding <= 0:
        return images
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = to_device(torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator), images.device)
    rows = offsets[:, 0, None] + torch.arange(height, device=images.device)  # (batch, height)
    cols = offsets[:, 1, None] + torch.arange(width, device=images.device)
    index = torch.arange(batch, device=images.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2)


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = to_device(torch.rand(images.shape[0], generator=generator) < 0.5, images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_erasing(
    images: torch.Tensor, probability: float, generator: torch.Generator | None = None, max_area: float = 0.33
) -> torch.Tensor:
    """With `probability`, set a random rectangle (2%..max_area of the image, aspect 0.3..3.3) to zero."""
    if probability <= 0:
        return images
    batch, _, height, width = images.shape
    device = images.device
    area = _uniform(0.02, max_area, (batch,), generator, device) * height * width
    aspect = torch.exp(_uniform(-1.2, 1.2, (batch,), generator, device))
    box_h = (area * aspect).sqrt().clamp(1, height).long()
    box_w = (area / aspect).sqrt().clamp(1, width).long()
    top = (_uniform(0, 1, (batch,), generator, device) * (height - box_h + 1)).long()
    left = (_uniform(0, 1, (batch,), generator, device) * (width - box_w + 1)).long()
    apply = _uniform(0, 1, (batch,), generator, device) < probability
    rows = torch.arange(height, device=device)[None, :, None]
    cols = torch.arange(width, device=device)[None, None, :]
    inside = (
        (rows >= top[:, None, None])
        & (rows < (top + box_h)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + box_w)[:, None, None])
        & apply[:, None, None]
    )
    return images.masked_fill(inside[:, None], 0.0)


def mix_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    label_smoothing: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix (one, chosen at random when both are on) with the batch reversed; returns soft targets.

    The targets mix the two one-hot labels in the proportion of the images: lam for mixup, and the
    exact share of pixels kept for CutMix (after clipping the box to the image).
    """
    targets = F.one_hot(labels, num_classes).float()
    if label_smoothing:
        targets = targets * (1 - label_smoothing) + label_smoothing / num_classes
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or torch.rand(1, generator=generator).item() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    if alpha <= 0:
        return images, targets
    lam = (
        float(torch.distributions.Beta(alpha, alpha).sample().item())
        if generator is None
        else float(torch._sample_dirichlet(torch.tensor([alpha, alpha]), generator=generator)[0])
    )
    partner = images.flip(0)
    if use_cutmix:
        height, width = images.shape[-2:]
        cut_h, cut_w = int(height * (1 - lam) ** 0.5), int(width * (1 - lam) ** 0.5)
        center_y = int(torch.randint(0, height, (1,), generator=generator))
        center_x = int(torch.randint(0, width, (1,), generator=generator))
        y0, y1 = max(center_y - cut_h // 2, 0), min(center_y + cut_h // 2, height)
        x0, x1 = max(center_x - cut_w // 2, 0), min(center_x + cut_w // 2, width)
        images = images.clone()
        images[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    else:
        images = lam * images + (1 - lam) * partner
    return images, lam * targets + (1 - lam) * targets.flip(0)


def check_randaugment(channels: int) -> None:
    """Raise ConfigError unless RandAugment can run here: kornia installed and 3-channel images."""
    if importlib.util.find_spec("kornia") is None:
        raise ConfigError("data.randaugment needs kornia; run: pip install 'vitlab[augment]'")
    if channels != 3:
        raise ConfigError("data.randaugment works on 3-channel images; turn it off for grey data sets")


@functools.cache
def _randaugment_module(num_ops: int, magnitude: int) -> torch.nn.Module:
    # Built once: building kornia's policy took 6 ms, a third of applying it to a 256-image batch.
    from kornia.augmentation.auto import RandAugment

    return RandAugment(n=num_ops, m=magnitude)


def randaugment(images: torch.Tensor, num_ops: int = 2, magnitude: int = 9) -> torch.Tensor:
    """RandAugment from kornia (optional: pip install 'vitlab[augment]'); needs 3-channel images in [0, 1]."""
    check_randaugment(images.shape[1])
    return _randaugment_module(num_ops, magnitude)(images).clamp(0, 1)


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    data: DataConfig,
    label_smoothing: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every augmentation the config turns on, in order; returns images and (soft) targets."""
    if data.augment:
        if data.crop_padding:
            images = random_crop(images, data.crop_padding, generator)
        if data.hflip:
            images = random_flip(images, generator)
        if data.affine:
            images = random_affine(
                images,
                degrees=data.rotate_degrees,
                scale=(data.scale_min, data.scale_max),
                translate=data.translate,
                generator=generator,
            )
        if data.randaugment:
            images = randaugment(images, magnitude=data.randaugment_magnitude)
        if data.random_erasing:
            images = random_erasing(images, data.random_erasing, generator)
        if data.mixup_alpha or data.cutmix_alpha:
            return mix_batch(
                images,
                labels,
                num_classes,
                mixup_alpha=data.mixup_alpha,
                cutmix_alpha=data.cutmix_alpha,
                label_smoothing=label_smoothing,
                generator=generator,
            )
    return images, labels
