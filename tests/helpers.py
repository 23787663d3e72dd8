"""Helpers shared by tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vitlab.config import ModelConfig

# The project's shared data (real MNIST and Fashion-MNIST files, CIFAR-10 JPEGs): beside the checkout
# in the project's workspace, or wherever this variable points.
SHARED_DATA_VARIABLE = "VITLAB_SHARED_DATA"
SHARED_DATA_BESIDE_CHECKOUT = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(relative: str) -> Path:
    """A file or folder of the shared data; a test that needs it and cannot find it fails in one line
    saying where it looked and how to point it elsewhere."""
    root = Path(os.environ.get(SHARED_DATA_VARIABLE) or SHARED_DATA_BESIDE_CHECKOUT)
    path = root / relative
    if not path.exists():
        pytest.fail(
            f"this test reads the project's shared data, and {path} does not exist: "
            f"set {SHARED_DATA_VARIABLE} to the folder that holds mnist/ and fashion-mnist/",
            pytrace=False,
        )
    return path


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
