"""Analytic parameter and FLOP counts of a ViT forward pass, per image.

Counts multiply-accumulates (MACs) of the matrix products, which dominate; FLOPs = 2 x MACs.
With N patch tokens, T = N (+1 with a class token), width D, MLP width M, patch P, channels C,
depth L and K classes:
  patch embedding      N * C * P^2 * D
  (conv stem instead)  sum over its 3x3 convolutions of (output side)^2 * 9 * C_in * C_out, + N * C_last * D
  per block            T * 3D^2 (Q, K, V)  +  2 * T^2 * D (QK^T and attention x V)
                       + T * D^2 (output projection)  +  2 * T * D * M (MLP)
  (class-token pooling: the last block computes the class token's output alone, as ViT.forward
   does, which removes (T - 1) * (2 * T * D + D^2 + 2 * D * M) of its own)
  attention pooling    D^2 (query) + 2 T D^2 (keys, values) + 2 T D (attend) + D^2 + 2 D M
  head                 D * K   (MLP head: D * H + H * K)
Norms, softmax, GELU and additions are left out: they are O(T * D), under 2% for these models.
A training step costs about 3x the forward FLOPs (forward, and backward for inputs and weights).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from vitlab.config import ModelConfig


def forward_macs(config: ModelConfig) -> int:
    """Multiply-accumulates of one image's forward pass (ViT: the formula above)."""
    if config.arch != "vit":
        return counted_forward_flops(config) // 2
    n = config.num_patches
    t = config.num_tokens
    d, m = config.embed_dim, config.mlp_dim
    macs = stem_macs(config) if config.stem == "conv" else n * config.in_channels * config.patch_size**2 * d
    per_block = t * 3 * d * d + 2 * t * t * d + t * d * d + 2 * t * d * m
    macs += config.depth * per_block
    if config.pool == "cls":
        macs -= (t - 1) * (2 * t * d + d * d + 2 * d * m)
    if config.pool == "map":
        macs += d * d + 2 * t * d * d + 2 * t * d + d * d + 2 * d * m
    if config.head == "mlp":
        hidden = config.head_hidden_dim or d
        macs += d * hidden + hidden * config.num_classes
    else:
        macs += d * config.num_classes
    return macs


def stem_macs(config: ModelConfig) -> int:
    """Multiply-accumulates of the convolutional stem (models.vit.ConvStem) for one image."""
    from vitlab.models.vit import ConvStem

    widths = ConvStem.widths(config)
    side = config.grid_size * config.patch_size
    macs = 0
    for c_in, c_out in zip(widths, widths[1:]):
        side //= 2
        macs += side * side * 9 * c_in * c_out
    return macs + config.num_patches * widths[-1] * config.embed_dim


def forward_flops(config: ModelConfig) -> int:
    """FLOPs of one image's forward pass (2 per multiply-accumulate)."""
    return 2 * forward_macs(config)


def training_flops(config: ModelConfig) -> int:
    """FLOPs of one image's training step: forward plus a backward of twice the cost."""
    return 3 * forward_flops(config)


def counted_forward_flops(config: ModelConfig) -> int:
    """FLOPs of one forward pass counted by PyTorch's FLOP counter (used for the CNN baseline)."""
    from vitlab.models.registry import build_model

    model = build_model(config).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, config.in_channels, config.img_size, config.img_size))
    return counter.get_total_flops()
