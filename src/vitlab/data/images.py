"""Decoding image files of any format, size and mode into the uint8 tensors a model expects."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from vitlab.errors import ImageError

# The files a folder's listing takes as images (of an animated GIF or a multi-page TIFF, the first frame).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
IMAGE_FORMATS = "PNG, JPEG, BMP, WebP, GIF or TIFF"


def scale_to_8bit(values: np.ndarray) -> np.ndarray:
    """Pixel values of a wider type -> uint8 by their value range, not by clipping: 16-bit integers to
    65535; floats with no value above 1 (the usual scale of a float image) to 1; others to 255, or to 65535
    past it."""
    highest = float(values.max(initial=0))
    if (values.dtype.kind in "ui" and values.dtype.itemsize == 2) or highest > 255:
        top = 65535.0
    elif np.issubdtype(values.dtype, np.floating) and highest <= 1.0:
        top = 1.0
    else:
        top = 255.0
    return np.clip(values.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer and float images scaled to 8 bits (scale_to_8bit)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return Image.fromarray(scale_to_8bit(np.asarray(image)), mode="L")
    return image


def convert_image(image: Image.Image, channels: int, size: int) -> torch.Tensor:
    """A PIL image -> uint8 tensor (channels, size, size): alpha flattened onto black, palette expanded."""
    image = ImageOps.exif_transpose(image) or image
    image = _to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    array = np.asarray(image, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()


def load_image(path: str | Path, channels: int, size: int) -> torch.Tensor:
    """Read an image file into uint8 (channels, size, size), with one-line errors for bad files."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image not found: {path}")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path} is empty")
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 M pixels and refuses from twice that (a guard against decompression
            # bombs). A large scan under the refusal is the user's own file: decoded without the warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return convert_image(image, channels, size)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path} is too large to decode safely ({str(exc).split(', could be')[0]})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image in a format vitlab can read ({IMAGE_FORMATS})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path} is damaged or truncated ({exc})") from None
