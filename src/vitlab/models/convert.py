"""Other libraries' ViT checkpoints -> vitlab configs and state dicts.

Two layouts are read:
- Hugging Face `ViTForImageClassification` / `ViTModel` folders (`config.json` and
  `model.safetensors` or `pytorch_model.bin`), with the on-disk key names every published
  checkpoint uses (`vit.encoder.layer.N.attention.attention.query`, ...) and the names
  transformers 5 uses in memory (`vit.layers.N.attention.q_proj`, ...).
- timm `VisionTransformer` state dicts (`patch_embed.proj`, `cls_token`, `pos_embed`,
  `blocks.N.attn.qkv`, `blocks.N.mlp.fc1`, `norm` or `fc_norm`, `head`, and `attn_pool` for
  attention-pooling models), in safetensors or `.pth`/`.bin` files.

Both libraries add a position embedding to the class token; vitlab keeps the class token
apart from the patch grid, so that embedding is folded into the class token (the same sum).
Pickled files are read with `torch.load(weights_only=True)`: tensors only, never arbitrary objects.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from vitlab.config import ModelConfig
from vitlab.errors import CheckpointError

# Head counts of the standard widths; timm files do not record them.
STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16}


@dataclass
class Converted:
    """A foreign checkpoint translated to vitlab: the config, the weights, and class names if known."""

    config: ModelConfig
    state: dict[str, torch.Tensor]
    class_names: list[str] | None
    source_format: str


def read_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, or a .pth/.bin file read without unpickling objects."""
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        with warnings.catch_warnings():  # torch warns about pickle protocols it then reads fine
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except (SafetensorError, RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as exc:
        if "Weights only load failed" in str(exc):  # torch's own text here suggests unpickling anything
            raise CheckpointError(
                f"{path} is not a weights file vitlab reads: neither safetensors nor a pickle of tensors alone "
                "(pickled objects are never loaded)"
            ) from None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} cannot be read as a weights file ({first})") from None
    for key in ("state_dict", "model", "module"):  # training scripts often wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors")
    return state


def _split_class_position(pos_embed: torch.Tensor, cls_token: torch.Tensor | None, num_patches: int):
    """Separate the class token's position row (folded into the token) from the patch grid."""
    table = pos_embed.reshape(-1, pos_embed.shape[-1])
    if table.shape[0] == num_patches + 1:
        if cls_token is None:
            raise CheckpointError("the position table has a class-token row but there is no class token")
        return table[1:][None], cls_token + table[:1][None]
    if table.shape[0] == num_patches:
        return table[None], cls_token
    raise CheckpointError(f"position table of {table.shape[0]} rows does not fit {num_patches} patches")


# ----- Hugging Face -------------------------------------------------------------------------------
_HF_BLOCK_NAMES = {
    # on disk (transformers 4.x and every published checkpoint) -> in memory (transformers 5.x)
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


def _hf_canonical(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF keys without the `vit.` prefix, in the transformers 5 naming."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("vit.")
        match = re.match(r"^encoder\.layer\.(\d+)\.(.+)$", key)
        if match:
            index, rest = match.groups()
            for old, new in _HF_BLOCK_NAMES.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old) :]
                    break
            key = f"layers.{index}.{rest}"
        out[key] = value
    return out


def from_huggingface(folder: Path) -> Converted:
    """A Hugging Face ViT folder (config.json + weights) as a vitlab model."""
    try:
        hf = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}/config.json cannot be read ({exc})") from None
    if hf.get("model_type") != "vit":
        raise CheckpointError(f"{folder} holds a {hf.get('model_type')!r} model; only Hugging Face 'vit' is supported")
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).exists()), None)
    if weights is None:
        raise CheckpointError(f"{folder} has no model.safetensors or pytorch_model.bin")
    state = _hf_canonical(read_tensor_file(weights))
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(
            f"{folder}: activation {hf.get('hidden_act')!r} is not supported (vitlab uses exact GELU)"
        )
    depth = int(hf["num_hidden_layers"])
    has_head = "classifier.weight" in state
    config = ModelConfig(
        img_size=int(hf["image_size"]),
        in_channels=int(hf.get("num_channels", 3)),
        num_classes=state["classifier.weight"].shape[0] if has_head else len(hf.get("id2label") or {}) or 1000,
        patch_size=int(hf["patch_size"]),
        embed_dim=int(hf["hidden_size"]),
        depth=depth,
        num_heads=int(hf["num_attention_heads"]),
        mlp_ratio=int(hf["intermediate_size"]) / int(hf["hidden_size"]),
        posenc="learned",
        pool="cls",
        qkv_bias=bool(hf.get("qkv_bias", True)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
    )
    config.validate()
    out: dict[str, torch.Tensor] = {}
    out["pos_embed"], out["cls_token"] = _split_class_position(
        state["embeddings.position_embeddings"], state["embeddings.cls_token"], config.num_patches
    )
    out["patch_embed.proj.weight"] = state["embeddings.patch_embeddings.projection.weight"]
    out["patch_embed.proj.bias"] = state["embeddings.patch_embeddings.projection.bias"]
    for i in range(depth):
        layer = f"layers.{i}."
        block = f"blocks.{i}."
        out[block + "attn.qkv.weight"] = torch.cat([state[f"{layer}attention.{n}_proj.weight"] for n in "qkv"])
        if config.qkv_bias:
            out[block + "attn.qkv.bias"] = torch.cat([state[f"{layer}attention.{n}_proj.bias"] for n in "qkv"])
        pairs = {
            "attn.proj": "attention.o_proj",
            "mlp.fc1": "mlp.fc1",
            "mlp.fc2": "mlp.fc2",
            "norm1": "layernorm_before",
            "norm2": "layernorm_after",
        }
        for ours, theirs in pairs.items():
            for kind in ("weight", "bias"):
                out[f"{block}{ours}.{kind}"] = state[f"{layer}{theirs}.{kind}"]
    out["norm.weight"], out["norm.bias"] = state["layernorm.weight"], state["layernorm.bias"]
    if has_head:
        out["head.weight"], out["head.bias"] = state["classifier.weight"], state["classifier.bias"]
    id2label = hf.get("id2label") or {}
    names = [id2label.get(str(i), str(i)) for i in range(config.num_classes)] if id2label else None
    return Converted(config, out, names, "huggingface")


# ----- timm ---------------------------------------------------------------------------------------
_UNSUPPORTED_TIMM = {
    "reg_token": "register tokens",
    ".ls1.": "layer scale",
    ".q_norm.": "query/key normalisation",
    "patch_embed.norm.": "a normalised patch embedding",
    "norm_pre.": "a pre-encoder norm",
}


def from_timm(
    state: dict[str, torch.Tensor], num_heads: int | None = None, num_classes: int | None = None
) -> Converted:
    """A timm VisionTransformer state dict as a vitlab model; the head count comes from the width if not given."""
    for marker, feature in _UNSUPPORTED_TIMM.items():
        if any(marker in key or key.startswith(marker.strip(".")) for key in state):
            raise CheckpointError(f"this timm model uses {feature}, which vitlab's ViT does not have")
    if "patch_embed.proj.weight" not in state or "blocks.0.attn.qkv.weight" not in state:
        raise CheckpointError("not a timm VisionTransformer state dict (no patch_embed.proj / blocks.0.attn.qkv)")
    proj = state["patch_embed.proj.weight"]
    embed_dim, in_channels, patch, _ = proj.shape
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k)))
    heads = num_heads or STANDARD_HEADS.get(embed_dim) or max(1, embed_dim // 64)
    has_cls = "cls_token" in state
    if "attn_pool.latent" in state:
        pool = "map"
    elif "fc_norm.weight" in state or not has_cls:
        pool = "mean"
    else:
        pool = "cls"
    norm_after_pool = "fc_norm.weight" in state
    pos = state.get("pos_embed")
    if pos is None:
        raise CheckpointError("timm models without a learned pos_embed are not supported")
    grid = _square_side(pos.shape[1]) or _square_side(pos.shape[1] - 1)  # without or with a class-token row
    if grid is None:
        raise CheckpointError(f"pos_embed of {pos.shape[1]} rows is not a square patch grid")
    head = state.get("head.weight")
    config = ModelConfig(
        img_size=grid * patch,
        in_channels=in_channels,
        num_classes=head.shape[0] if head is not None else (num_classes or 1000),
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        posenc="learned",
        pool=pool,
        class_token=has_cls and pool != "cls",
        norm_after_pool=norm_after_pool,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        layer_norm_eps=1e-6,
    )
    config.validate()
    out = {k: v for k, v in state.items() if k.startswith(("blocks.", "patch_embed.proj.", "head."))}
    out["pos_embed"], cls = _split_class_position(pos, state.get("cls_token"), config.num_patches)
    if cls is not None:
        out["cls_token"] = cls
    norm = "fc_norm" if norm_after_pool else "norm"
    out["norm.weight"], out["norm.bias"] = state[f"{norm}.weight"], state[f"{norm}.bias"]
    for key, value in state.items():
        if key.startswith("attn_pool."):
            out[key.replace("attn_pool.latent", "attn_pool.probe")] = value
    return Converted(config, out, None, "timm")


def _square_side(count: int) -> int | None:
    side = int(round(count**0.5))
    return side if side > 0 and side * side == count else None


def load_foreign(path: str | Path, num_heads: int | None = None) -> Converted:
    """A Hugging Face folder or a timm weights file, detected by its layout."""
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").exists():
            return from_huggingface(path)
        raise CheckpointError(f"{path} is a folder without config.json (not a Hugging Face model)")
    state = read_tensor_file(path)
    if any(k.startswith(("vit.", "embeddings.")) for k in state):
        raise CheckpointError(f"{path} has Hugging Face key names; pass the folder that also holds its config.json")
    return from_timm(state, num_heads=num_heads)
