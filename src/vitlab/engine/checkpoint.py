"""Checkpoints as safetensors with their JSON metadata embedded, written atomically.

A checkpoint is one `.safetensors` file whose header metadata holds the model config and
what inference needs (class names, normalisation). A `.json` copy of that metadata is written
beside it for people to read; loading uses the embedded copy, so the pair can never disagree
about which weights belong to which config. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from vitlab.atomic import atomic_write_bytes
from vitlab.config import ModelConfig, section_from_dict
from vitlab.errors import CheckpointError, ConfigError
from vitlab.models.registry import build_model

FORMAT = "vitlab-checkpoint"
RESUME_FORMAT = "vitlab-resume"
FORMAT_VERSION = 1
METADATA_KEY = "vitlab"


class ForeignFileError(CheckpointError):
    """A readable safetensors file that vitlab did not write (another library's weights, perhaps)."""


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any], kind: str = FORMAT) -> None:
    """Save named tensors and a JSON-able metadata dict (tagged with its `kind`) as one safetensors file, atomically."""
    metadata = {"format": kind, **metadata}
    plain = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}
    payload = save_safetensors_bytes(plain, metadata={METADATA_KEY: json.dumps(metadata)})
    atomic_write_bytes(path, payload)


def load_tensors(path: Path, expected_format: str = FORMAT) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file written by `save_tensors`: its tensors and its metadata."""
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    try:
        tensors = load_safetensors_bytes(payload)
        header_len = int.from_bytes(payload[:8], "little")
        header = json.loads(payload[8 : 8 + header_len])
        metadata = json.loads(header.get("__metadata__", {}).get(METADATA_KEY, "null"))
    except (SafetensorError, ValueError, UnicodeDecodeError, OverflowError) as exc:
        if payload[:2] == b"PK":  # torch.save's and TorchScript's zip archives
            raise CheckpointError(
                f"{path} is a PyTorch zip archive (torch.save or TorchScript), not a vitlab checkpoint: "
                "use a run, its .safetensors checkpoint or an exported .onnx file"
            ) from None
        if path.suffix == ".onnx":  # predict and eval take exported files before they get here
            raise exported_file_error(path) from None
        raise CheckpointError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    found = metadata.get("format") if isinstance(metadata, dict) else None
    if found == RESUME_FORMAT and expected_format == FORMAT:
        raise CheckpointError(
            f"{path} is a run's resume state (for vitlab train --resume); use the run folder or its "
            "best.safetensors or last.safetensors"
        )
    if found is None:
        raise ForeignFileError(f"{path} is a safetensors file but not a {expected_format} file")
    if found != expected_format:
        raise CheckpointError(f"{path} is a vitlab {found} file, not a {expected_format} file")
    return tensors, metadata


def exported_file_error(path: Path) -> CheckpointError:
    """The error for an exported ONNX file given where a command needs weights."""
    return CheckpointError(
        f"{path} is an exported ONNX file, which `vitlab predict` and `vitlab eval` run; "
        "this command needs the weights: the run or its .safetensors checkpoint"
    )


def save_checkpoint(path: Path, model: nn.Module, info: dict[str, Any]) -> None:
    """Save model weights with its config and `info` (class names, normalisation, metrics...)."""
    metadata = {
        "version": FORMAT_VERSION,
        "architecture": model.config.arch,
        "model": _config_dict(model.config),
        **info,
    }
    save_tensors(path, model.state_dict(), metadata)
    sidecar = {"format": FORMAT, **metadata}
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(sidecar, indent=2) + "\n").encode())


def _config_dict(config: ModelConfig) -> dict[str, Any]:
    return {key: getattr(config, key) for key in config.__dataclass_fields__}


def model_config_from_metadata(metadata: dict[str, Any], source: Path) -> ModelConfig:
    """The ModelConfig stored in a checkpoint, refusing unknown architectures or keys."""
    try:
        config = section_from_dict(ModelConfig, metadata.get("model") or {}, "model")
        config.validate()
    except ConfigError as exc:
        raise CheckpointError(f"{source}: stored config is invalid: {exc}") from None
    if metadata.get("architecture") != config.arch:
        raise CheckpointError(
            f"{source} says architecture {metadata.get('architecture')!r} but its config is {config.arch!r}"
        )
    return config


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load weights, explaining any missing, unexpected or mis-shaped tensor in one line."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [
        f"{name} {tuple(state[name].shape)} vs {tuple(expected[name].shape)}"
        for name in sorted(set(expected) & set(state))
        if state[name].shape != expected[name].shape
    ]
    if missing or unexpected or mis_shaped:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
            if names:
                parts.append(
                    f"{label}: {', '.join(names[:3])}" + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
                )
        raise CheckpointError(f"{source}: weights do not match its config ({'; '.join(parts)})")
    model.load_state_dict(state)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint (or run directory) describes and load its weights."""
    path = resolve_checkpoint(path)
    tensors, metadata = load_tensors(path)
    model = build_model(model_config_from_metadata(metadata, path))
    load_state_strict(model, tensors, path)
    model.eval()
    return model, metadata


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means its best checkpoint (else last); a .json sidecar means its .safetensors."""
    path = Path(path)
    if path.is_dir():
        for name in ("best", "last"):
            candidate = path / "checkpoints" / f"{name}.safetensors"
            if candidate.exists():
                return candidate
        raise CheckpointError(
            f"{path} is a folder with no checkpoints/best.safetensors or checkpoints/last.safetensors"
        )
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def scoring_precision(metadata: dict[str, Any]) -> str:
    """The precision setting that scores a checkpoint as its run scored its epochs: fp32 for a run that
    trained in fp32, even where bf16 is available; else auto (bf16 where the device has it)."""
    return "fp32" if metadata.get("precision") == "fp32" else "auto"


def recorded_test_split(metadata: dict[str, Any], checkpoint: str | Path) -> tuple[float, int] | None:
    """(test fraction, seed) that split the image folder the checkpoint's run trained on, when known: from
    the checkpoint, or for one from before it was recorded, from the run's config.yaml beside it."""
    from vitlab.config import load_run_config

    if "test_split" in metadata:
        return float(metadata["test_split"]["fraction"]), int(metadata["test_split"]["seed"])
    path = Path(checkpoint)
    run_config = path / "config.yaml" if path.is_dir() else path.parent.parent / "config.yaml"
    if not run_config.is_file():
        return None
    config = load_run_config(run_config)
    return config.data.test_fraction, config.train.seed
