"""Export a trained model to ONNX (checked against PyTorch with onnxruntime) or TorchScript.

The exported graph takes normalised float images (batch, channels, size, size) and returns
logits; the ONNX file carries the class names and normalisation in its metadata, so
`vitlab predict model.onnx image.png` needs nothing else. onnx, onnxscript and onnxruntime
are optional: `pip install vitlab[export]`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitlab.atomic import atomic_path
from vitlab.errors import CheckpointError, ConfigError, VitlabError

ONNX_TOLERANCE = 1e-4


class ExportError(VitlabError):
    """An export that failed, or whose output does not match PyTorch's."""


@dataclass
class ExportResult:
    """Where the file went and how closely it reproduces PyTorch."""

    path: Path
    format: str
    max_abs_diff: float


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ExportError(f"{module} is not installed; run: pip install 'vitlab[export]'") from None


@contextlib.contextmanager
def _quiet_exporters():
    """The exporters narrate every pass and warn about optional packages; keep the terminal for results."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _example(model: nn.Module, batch: int) -> torch.Tensor:
    config = model.config
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, config.in_channels, config.img_size, config.img_size, generator=generator)


def export_onnx(model: nn.Module, metadata: dict[str, Any], path: Path, fixed_batch: int | None = None) -> ExportResult:
    """Write an ONNX file that takes any batch (or only `fixed_batch` images) and check it with onnxruntime."""
    onnx = _require("onnx")
    _require("onnxscript")
    ort = _require("onnxruntime")
    model = model.float().eval()
    model.set_attention_kernel("manual")  # the explicit path exports to plain ONNX operators
    example = _example(model, fixed_batch or 2)
    with atomic_path(path) as tmp:
        options: dict[str, Any] = {"input_names": ["images"], "output_names": ["logits"], "dynamo": True}
        if fixed_batch is None:
            options["dynamic_shapes"] = {"images": {0: torch.export.Dim("batch", min=1, max=65536)}}
        try:
            with _quiet_exporters():
                program = torch.onnx.export(model, (example,), None, verbose=False, **options)
        except Exception as exc:  # the exporter raises many types; report it in one line
            raise ExportError(f"ONNX export failed: {str(exc).splitlines()[0][:300]}") from None
        proto = program.model_proto
        for key in ("class_names", "mean", "std", "dataset", "test_split", "folder_state"):
            if key in metadata:
                entry = proto.metadata_props.add()
                entry.key, entry.value = f"vitlab.{key}", json.dumps(metadata[key])
        onnx.save_model(proto, str(tmp))
        check_batch = _example(model, fixed_batch or 5)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {"images": check_batch.numpy()})
        with torch.no_grad():
            expected = model(check_batch).numpy()
        diff = float(np.abs(got - expected).max())
        if diff > ONNX_TOLERANCE:
            raise ExportError(f"onnxruntime output differs from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE:g})")
    return ExportResult(path, "onnx", diff)


def export_torchscript(model: nn.Module, path: Path) -> ExportResult:
    """Trace the model to TorchScript and check the traced module, at another batch size, against eager PyTorch."""
    model = model.float().eval()
    model.set_attention_kernel("manual")
    with atomic_path(path) as tmp, torch.no_grad():
        with _quiet_exporters():  # also torch 2.13's deprecation warnings for trace and load
            traced = torch.jit.trace(model, _example(model, 2))
            traced.save(str(tmp))
            reloaded = torch.jit.load(str(tmp))
        check = _example(model, 5)
        diff = float((reloaded(check) - model(check)).abs().max())
    return ExportResult(path, "torchscript", diff)


def onnx_device(device: str) -> torch.device:
    """The device an exported ONNX file runs on, the CPU (through onnxruntime), when `device` allows it."""
    if device not in ("auto", "cpu"):
        raise ConfigError(f"an ONNX file runs on the CPU through onnxruntime, not on {device}")
    return torch.device("cpu")


class OnnxClassifier:
    """An exported ONNX file run through onnxruntime, with the metadata `predict` needs."""

    def __init__(self, path: str | Path) -> None:
        ort = _require("onnxruntime")
        if not Path(path).is_file():  # onnxruntime's own message for this is three lines of its internals
            raise CheckpointError(f"exported model not found: {path}")
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{path} is not a readable ONNX model ({str(exc).splitlines()[0][:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {
            key.removeprefix("vitlab."): json.loads(value) for key, value in meta.items() if key.startswith("vitlab.")
        }
        shape = self.session.get_inputs()[0].shape
        self.channels, self.img_size = int(shape[1]), int(shape[2])
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.num_classes = int(self.session.get_outputs()[0].shape[1])

    def logits(self, normalised: torch.Tensor) -> torch.Tensor:
        """Run the graph on normalised images; a file exported with a fixed batch takes them in chunks of it."""
        arrays = normalised.float().numpy()
        if self.fixed_batch is None:
            return torch.from_numpy(self.session.run(None, {"images": arrays})[0])
        outputs = []
        for start in range(0, len(arrays), self.fixed_batch):
            chunk = arrays[start : start + self.fixed_batch]
            padding = np.zeros((self.fixed_batch - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
            outputs.append(self.session.run(None, {"images": np.concatenate([chunk, padding])})[0][: len(chunk)])
        return torch.from_numpy(np.concatenate(outputs))
