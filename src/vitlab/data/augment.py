"""Batched augmentations that run on the training device, one random draw per image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator).to(device)

    angle = uniform(-math.radians(degrees), math.radians(degrees), batch)
    # affine_grid maps output coordinates to input coordinates, so zooming in by s divides by s.
    inverse_scale = 1.0 / uniform(scale[0], scale[1], batch)
    shift = uniform(-2 * translate, 2 * translate, batch, 2)  # grid coordinates span [-1, 1]
    cos, sin = torch.cos(angle) * inverse_scale, torch.sin(angle) * inverse_scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
    )
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
