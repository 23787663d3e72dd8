"""Helpers shared by tests."""

from __future__ import annotations

import os
from pathlib import Path

from vitlab.config import ModelConfig

# The project's shared data (real MNIST and Fashion-MNIST files, CIFAR-10 JPEGs), beside the checkout.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_config(**overrides) -> ModelConfig:
    """A ViT small enough to run in milliseconds on 28x28 grey images."""
    fields = dict(img_size=28, in_channels=1, num_classes=10, patch_size=7, embed_dim=32, depth=2, num_heads=4)
    fields.update(overrides)
    return ModelConfig(**fields)


def unreadable_image_folder(root: Path, per_class: int = 5) -> Path:
    """An image folder (classes cat, dog) whose every .png file is text: nothing in it decodes."""
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            (root / name / f"{index}.png").write_text("not a picture")
    return root


def grey_image_folder(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 3) -> Path:
    """An image folder of small grey PNGs of varied sizes, each class a different brightness."""
    from PIL import Image

    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            Image.new("L", (10 + index % 5, 10), 40 * label + index % 7).save(root / name / f"{index}.png")
    return root


def ordinary_file_mode() -> int:
    """The permissions a new file gets from open() under this process's umask (mkstemp's are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
