"""Helpers shared by tests."""

from __future__ import annotations

from vitlab.config import ModelConfig


def tiny_config(**overrides) -> ModelConfig:
    """A ViT small enough to run in milliseconds on 28x28 grey images."""
    fields = dict(img_size=28, in_channels=1, num_classes=10, patch_size=7, embed_dim=32, depth=2, num_heads=4)
    fields.update(overrides)
    return ModelConfig(**fields)
