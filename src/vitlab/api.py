"""The Python API: `vitlab.load(path)` -> a classifier with `.predict(images)`.

import vitlab
classifier = vitlab.load("runs/mnist-20261122-181500")   # a run, a .safetensors checkpoint, or a .onnx file
classifier.predict(["digit.png", pil_image, numpy_array, tensor])   # -> [Prediction, ...]; .label of each
classifier.predict(batch)   # an (N, H, W[, C]) array or an (N, C, H, W) tensor: N predictions
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vitlab.data.images import convert_image, load_image, scale_to_8bit
from vitlab.data.tensors import to_model_input
from vitlab.errors import ConfigError, ImageError
from vitlab.terminal import counting_bar

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor
PREDICT_CHUNK = 256  # images per forward pass in predict_proba
# Channels a single image's array may have: grey, grey + alpha (np.asarray of an "LA" PNG), RGB, RGBA.
IMAGE_CHANNELS = (1, 2, 3, 4)
REPR_CLASSES = 10  # class names a Classifier's repr shows before "..."


@dataclass
class Prediction:
    """The top classes of one image, most probable first."""

    labels: list[str]
    indices: list[int]
    probabilities: list[float]

    @property
    def label(self) -> str:
        """The most probable class."""
        return self.labels[0]


def as_image_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """The images in a list, a single image, or a stacked batch split along its first axis.

    A batch is a 4-D array (N, H, W, C) or tensor (N, C, H, W), or a 3-D one whose channel axis cannot be
    one (numpy's last, a tensor's first, is 1 to 4 for a single image): (N, H, W) grey images.
    """
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, (np.ndarray, torch.Tensor)):
        channels = images.shape[0] if isinstance(images, torch.Tensor) else images.shape[-1]
        if images.ndim == 4 or (images.ndim == 3 and channels not in IMAGE_CHANNELS):
            return list(images)
    return [images]


class Classifier:
    """A trained model (PyTorch or ONNX) with the class names and normalisation it was trained with."""

    def __init__(self, path: str | Path, img_size: int | None = None, device: str = "auto") -> None:
        from vitlab.engine.runtime import resolve_device

        path = Path(path)
        if path.suffix == ".onnx":
            from vitlab.export import OnnxClassifier, onnx_device

            self.device = onnx_device(device)
            self._onnx = OnnxClassifier(path)
            self.metadata: dict[str, Any] = self._onnx.metadata
            self.channels, self.img_size = self._onnx.channels, self._onnx.img_size
            if img_size and img_size != self.img_size:
                raise ConfigError(
                    f"{path} runs at the {self.img_size}x{self.img_size} it was exported at; "
                    "another size needs the checkpoint (or an export made from it at that size)"
                )
            self._model = None
        else:
            from vitlab.engine.checkpoint import load_checkpoint, resolve_checkpoint
            from vitlab.engine.runtime import reuse_freed_memory

            self.device = resolve_device(device, "device")  # one that is not there fails before the weights load
            reuse_freed_memory()  # batched prediction reallocates the same activations every call
            path = resolve_checkpoint(path)
            self._model, self.metadata = load_checkpoint(path)
            if img_size and img_size != self._model.config.img_size:
                self._model = at_image_size(self._model, img_size)
            self._model.to(self.device)
            self.channels, self.img_size = self._model.config.in_channels, self._model.config.img_size
            self._onnx = None
        self.mean = self.metadata.get("mean") or [0.5] * self.channels
        self.std = self.metadata.get("std") or [0.5] * self.channels
        count = len(self.metadata.get("class_names") or []) or (self._model.config.num_classes if self._model else 0)
        self.classes: list[str] = list(self.metadata.get("class_names") or [str(i) for i in range(count)])
        self.source = path

    def __repr__(self) -> str:
        kind = "ONNX" if self._onnx else type(self._model).__name__
        shown = ", ".join(self.classes[:REPR_CLASSES]) + (", ..." if len(self.classes) > REPR_CLASSES else "")
        return (
            f"Classifier({str(self.source)!r}: {kind}, {self.channels}x{self.img_size}x{self.img_size} input, "
            f"{len(self.classes)} classes ({shown}), on {self.device})"
        )

    def read_files(self, paths: Sequence[str | Path]) -> list[torch.Tensor]:
        """Image files as uint8 (channels, size, size), every one read before any is returned (the first that
        cannot be read raises ImageError); many are decoded in worker processes, under a progress bar."""
        images = []
        for _, item in self._decoded(paths):
            if isinstance(item, str):
                raise ImageError(item)
            images.append(item)
        return images

    def read_readable_files(
        self, paths: Sequence[str | Path]
    ) -> tuple[list[str | Path], list[torch.Tensor], list[tuple[str | Path, str]]]:
        """As read_files, but a file that cannot be read is left out: (the paths read, their images, and
        (path, one-line reason) for each file left out)."""
        read, images, unreadable = [], [], []
        for path, item in self._decoded(paths):
            if isinstance(item, str):
                unreadable.append((path, item))
            else:
                read.append(path)
                images.append(item)
        return read, images, unreadable

    def _decoded(self, paths: Sequence[str | Path]) -> Iterator[tuple[str | Path, torch.Tensor | str]]:
        from vitlab.cores import available_cores
        from vitlab.data.folders import decoded_images

        decoded = decoded_images([str(p) for p in paths], self.channels, self.img_size, available_cores())
        for path, item in zip(paths, decoded):
            yield path, item if isinstance(item, str) else torch.from_numpy(item)

    def to_uint8(self, image: ImageLike) -> torch.Tensor:
        """One image of any supported kind -> uint8 (channels, size, size)."""
        if isinstance(image, (str, Path)):
            return load_image(image, self.channels, self.img_size)
        if isinstance(image, Image.Image):
            return convert_image(image, self.channels, self.img_size)
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu()
            if image.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds every bfloat16 exactly
                image = image.float()
            if image.ndim == 3 and image.shape[0] in IMAGE_CHANNELS:  # channels first -> last for PIL
                image = image.permute(1, 2, 0)
            image = image.numpy()
        if isinstance(image, np.ndarray):
            array = pixel_values(image)
            if array.ndim == 3 and array.shape[2] == 1:
                array = array[..., 0]
            if array.ndim not in (2, 3):
                raise ImageError(f"an image array must be HxW or HxWxC, got shape {image.shape}")
            try:
                picture = Image.fromarray(array)
            except TypeError:
                raise ImageError(f"an image array must have 1, 2, 3 or 4 channels, got shape {image.shape}") from None
            return convert_image(picture, self.channels, self.img_size)
        raise ImageError(f"cannot read an image from a {type(image).__name__}")

    @torch.no_grad()
    def predict_proba(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Class probabilities (N, classes) for one image, a list of images or a stacked batch (as_image_list)."""
        images = as_image_list(images)
        if not images:
            return torch.empty(0, len(self.classes))
        batch = torch.stack([self.to_uint8(image) for image in images])
        if self._model is not None:
            self._model.eval()
        # In chunks, so that a folder of thousands of images never holds all their activations at once.
        chunks = []
        with counting_bar("classifying", len(batch)) as advance:
            for chunk in batch.split(PREDICT_CHUNK):
                inputs = to_model_input(chunk.to(self.device), self.mean, self.std, self.img_size, self.channels)
                chunks.append(
                    self._onnx.logits(inputs) if self._onnx is not None else self._model(inputs).float().cpu()
                )
                advance(len(chunk))
        return torch.cat(chunks).softmax(dim=1)

    def predict(self, images: ImageLike | Sequence[ImageLike], top_k: int = 1) -> list[Prediction]:
        """The top-k classes of each image (all the classes when there are fewer than k)."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        probabilities = self.predict_proba(images)
        k = min(top_k, probabilities.shape[1])
        top = probabilities.topk(k, dim=1)
        return [
            Prediction([self.classes[i] for i in idx.tolist()], idx.tolist(), values.tolist())
            for values, idx in zip(top.values, top.indices)
        ]


def pixel_values(array: np.ndarray) -> np.ndarray:
    """An image array of any numeric type -> uint8 values, scaled by its range as image files of wide types
    are (scale_to_8bit); values no image has (NaN, infinities, negative ones) are refused, since they mean
    an array that is not an image yet, or one already normalised."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype.kind not in "uif":
        raise ImageError(f"an image array must hold numbers, got dtype {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ImageError("an image array holds NaN or infinite values")
    if array.size and array.min() < 0:
        raise ImageError(
            f"an image array's values must be 0..1 or 0..255, got a minimum of {array.min():.3g}: pass the "
            "image before normalisation (vitlab normalises with the mean and std the model was trained with)"
        )
    return scale_to_8bit(array)


def at_image_size(model: torch.nn.Module, img_size: int) -> torch.nn.Module:
    """The same model for another input size: a ViT's learned position table is resampled to the new patch
    grid; a CNN's convolutions and global pooling take any size as they are."""
    import dataclasses

    from vitlab.engine.finetune import adapt_state
    from vitlab.models.vit import ViT

    config = dataclasses.replace(model.config, img_size=img_size)
    patch = config.patch_size
    if config.arch == "vit" and img_size % patch and not config.pad_to_patch:
        # validate() would suggest model.pad_to_patch, a setting of training, not of this model
        below = img_size // patch * patch
        sizes = " or ".join(str(size) for size in (below, below + patch) if size)
        raise ConfigError(
            f"this model cuts images into {patch}x{patch} patches, so its input size must be a multiple "
            f"of {patch}: {sizes}, not {img_size}"
        )
    config.validate()
    if config.arch != "vit":
        model.config = config
        return model
    resized = ViT(config).eval()
    resized.load_state_dict(adapt_state(model.state_dict(), model.config, config, keep_head=True))
    return resized


def load(path: str | Path, img_size: int | None = None, device: str = "auto") -> Classifier:
    """Load a run directory, a vitlab checkpoint or an exported ONNX file for prediction.

    img_size runs a ViT checkpoint at another input size (position table resampled bicubically). device is
    'auto' (CUDA when present, else the CPU), 'cpu' or 'cuda[:N]'; an ONNX file runs on the CPU. Probabilities
    come back on the CPU either way.
    """
    return Classifier(path, img_size, device)
