"""Named presets and variant strings ("Ti/16", "S/8", "mnist-tiny") decoded into model configs."""

from __future__ import annotations

import dataclasses
import re

from torch import nn

from vitlab.config import ModelConfig
from vitlab.errors import ConfigError
from vitlab.models.cnn import ResNet
from vitlab.models.vit import ViT

# The classic widths from the ViT and DeiT papers: name -> (embed_dim, depth, num_heads, mlp_ratio).
CLASSIC_WIDTHS = {
    "Ti": (192, 12, 3, 4.0),
    "S": (384, 12, 6, 4.0),
    "B": (768, 12, 12, 4.0),
}
CLASSIC_PATCHES = (4, 8, 16)

# Small models sized for 28x28 (MNIST-like) and 32x32 (CIFAR-like) images.
SMALL_PRESETS: dict[str, dict] = {
    "mnist-tiny": dict(img_size=28, in_channels=1, patch_size=7, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4.0),
    "mnist-small": dict(img_size=28, in_channels=1, patch_size=4, embed_dim=64, depth=6, num_heads=4, mlp_ratio=2.0),
    "mnist-base": dict(img_size=28, in_channels=1, patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0),
    "cifar-tiny": dict(img_size=32, in_channels=3, patch_size=4, embed_dim=96, depth=6, num_heads=3, mlp_ratio=2.0),
    "resnet-small": dict(arch="resnet", img_size=28, in_channels=1, embed_dim=16, depth=2),
    "cifar-small": dict(img_size=32, in_channels=3, patch_size=4, embed_dim=192, depth=9, num_heads=3, mlp_ratio=2.0),
}

DEFAULT_PRESET = "mnist-tiny"
_VARIANT = re.compile(r"^(Ti|S|B)/(\d+)$")


def preset_names() -> list[str]:
    """Every accepted preset name."""
    classic = [f"{width}/{patch}" for width in CLASSIC_WIDTHS for patch in CLASSIC_PATCHES]
    return list(SMALL_PRESETS) + classic


def model_config(name: str, **overrides: object) -> ModelConfig:
    """The ModelConfig of a preset, with field overrides applied (not yet validated)."""
    if name in SMALL_PRESETS:
        fields = dict(SMALL_PRESETS[name])
    else:
        match = _VARIANT.match(name)
        if not match:
            raise ConfigError(f"unknown model preset {name!r}; known: {', '.join(preset_names())}")
        embed_dim, depth, num_heads, mlp_ratio = CLASSIC_WIDTHS[match.group(1)]
        fields = dict(
            img_size=224,
            in_channels=3,
            patch_size=int(match.group(2)),
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
        )
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown model key(s): {', '.join(unknown)}")
    fields.update(overrides)
    return ModelConfig(**fields)


def build_model(config: ModelConfig) -> nn.Module:
    """The model a config describes: a ViT, or the ResNet baseline."""
    return ResNet(config) if config.arch == "resnet" else ViT(config)
