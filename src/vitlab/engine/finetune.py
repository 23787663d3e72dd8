"""Starting from pretrained weights: adapting them to a new image size and head, freezing, layer-wise decay."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from vitlab.config import ModelConfig
from vitlab.engine.checkpoint import (
    ForeignFileError,
    exported_file_error,
    load_tensors,
    model_config_from_metadata,
    recorded_test_split,
    resolve_checkpoint,
)
from vitlab.errors import CheckpointError
from vitlab.models.convert import load_foreign
from vitlab.models.posenc import resample_grid_table


class PretrainedSource(NamedTuple):
    """Weights to start from, with their architecture and class names (None where not recorded)."""

    config: ModelConfig
    state: dict[str, torch.Tensor]
    class_names: list[str] | None
    test_split: tuple[str, float, int] | None  # a vitlab run's image folder, test fraction and seed


def read_source(source: str | Path) -> PretrainedSource:
    """A vitlab checkpoint/run, a Hugging Face folder or a timm file, read as a starting point."""
    path = Path(source)
    if path.suffix == ".onnx":
        raise exported_file_error(path)
    is_vitlab = path.suffix == ".safetensors" or (path.is_dir() and (path / "checkpoints").is_dir())
    if is_vitlab:
        checkpoint = resolve_checkpoint(path)
        try:
            state, metadata = load_tensors(checkpoint)
        except ForeignFileError:
            if path.is_dir():
                raise
            converted = load_foreign(path)  # a timm state dict saved as safetensors
            return PretrainedSource(converted.config, converted.state, converted.class_names, None)
        split = recorded_test_split(metadata, path)
        return PretrainedSource(
            model_config_from_metadata(metadata, checkpoint),
            state,
            metadata.get("class_names"),
            (metadata.get("dataset", ""), *split) if split else None,
        )
    converted = load_foreign(path)
    return PretrainedSource(converted.config, converted.state, converted.class_names, None)


def adapt_state(
    state: dict[str, torch.Tensor], source: ModelConfig, target: ModelConfig, keep_head: bool
) -> dict[str, torch.Tensor]:
    """Weights of `source` reshaped for `target`: position table resampled to the new grid, head kept or dropped."""
    adapted = dict(state)
    if "pos_embed" in adapted and source.grid_size != target.grid_size:
        table = adapted["pos_embed"][0]
        adapted["pos_embed"] = resample_grid_table(table, target.grid_size)[None]
    if not keep_head:
        for key in [k for k in adapted if k.startswith("head.")]:
            del adapted[key]
    return adapted


def load_pretrained(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load adapted weights; only the head may be missing (it starts fresh), nothing may be extra or mis-shaped."""
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    missing = sorted(k for k in set(expected) - set(state) if not k.startswith("head."))
    if unexpected or mis_shaped or missing:
        detail = "; ".join(
            f"{label}: {', '.join(names[:3])}"
            for label, names in (("unexpected", unexpected), ("wrong shape", mis_shaped), ("missing", missing))
            if names
        )
        raise CheckpointError(f"{source} does not fit the fine-tuning model ({detail})")
    model.load_state_dict(state, strict=False)


def freeze_until(model: nn.Module, blocks: int) -> int:
    """Freeze the patch embedding, tokens, position table and the first `blocks` encoder blocks; returns frozen count."""
    if blocks <= 0:
        return 0
    frozen = 0
    for name, param in model.named_parameters():
        index = block_index(name)
        if index is not None and index < blocks or name.startswith(("patch_embed.", "cls_token", "pos_embed")):
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def block_index(name: str) -> int | None:
    """The encoder block a parameter belongs to, or None outside the blocks."""
    if name.startswith("blocks."):
        return int(name.split(".")[1])
    return None


def layer_scale(name: str, depth: int, decay: float) -> float:
    """Learning-rate factor: decay^(depth - i) for block i, decay^(depth + 1) for the embeddings, 1 for the head."""
    if decay == 1.0:
        return 1.0
    index = block_index(name)
    if index is not None:
        return decay ** (depth - index)
    if name.startswith(("patch_embed.", "cls_token", "pos_embed")):
        return decay ** (depth + 1)
    return 1.0
