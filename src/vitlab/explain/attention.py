"""Attention maps from a model's own intermediates: per layer, per head, and rollout through layers.

Everything here reads the `attention_i` tensors (batch, heads, queries, keys) that
`ViT.forward(x, return_intermediates=True)` returns, so it works whichever attention kernel
the model trains with and for every pooling type.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitlab.models.vit import ViT


def attention_stack(intermediates: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every layer's attention as one tensor (layers, batch, heads, queries, keys)."""
    layers = sorted(
        (key for key in intermediates if key.startswith("attention_") and key[10:].isdigit()), key=lambda k: int(k[10:])
    )
    if not layers:
        raise ValueError("no attention weights in these intermediates; call forward(x, return_intermediates=True)")
    return torch.stack([intermediates[key].float() for key in layers])


def rollout(attentions: torch.Tensor, residual_weight: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) of (layers, batch, heads, tokens, tokens) weights.

    Heads are averaged; each layer's matrix becomes (1 - r) * A + r * I for the residual path,
    its rows are renormalised to sum to one, and the layers are multiplied from the first up.
    Returns (batch, tokens, tokens): how much each output token draws on each input token.
    """
    mean_heads = attentions.mean(dim=2)
    tokens = mean_heads.shape[-1]
    identity = torch.eye(tokens, dtype=mean_heads.dtype, device=mean_heads.device)
    result = identity.expand_as(mean_heads[0]).clone()
    for layer in mean_heads:
        mixed = (1.0 - residual_weight) * layer + residual_weight * identity
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        result = mixed @ result
    return result


def query_to_patches(model: ViT, weights: torch.Tensor) -> torch.Tensor:
    """Rows of (batch, [heads,] tokens, tokens) attention that the model's pooling reads, over patches only.

    Class-token models: the class token's row. Mean and attention pooling: the mean over every
    query (each token contributes equally to the pooled vector's inputs). The result has one
    weight per patch (batch, [heads,] patches) and sums to one per image (and head).
    """
    rows = weights[..., 0, :] if model.config.pool == "cls" else weights.mean(dim=-2)
    patches = rows[..., 1:] if model.config.has_class_token else rows
    return patches / patches.sum(dim=-1, keepdim=True)


def layer_maps(model: ViT, intermediates: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per layer, head-averaged attention from the pooling query to every patch: (layers, batch, patches)."""
    return torch.stack([query_to_patches(model, layer.mean(dim=1)) for layer in attention_stack(intermediates)])


def head_maps(model: ViT, intermediates: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """Every head of one layer, from the pooling query to every patch: (batch, heads, patches)."""
    return query_to_patches(model, intermediates[f"attention_{layer}"].float())


def rollout_map(model: ViT, intermediates: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rollout through all layers, read from the pooling query: (batch, patches).

    With attention pooling the final probe's attention (averaged over heads) is applied on top.
    """
    rolled = rollout(attention_stack(intermediates))
    if model.config.pool == "map":
        probe = intermediates["attention_pool"].float().mean(dim=1)  # (batch, 1, tokens)
        through = (probe @ rolled)[:, 0, int(model.config.has_class_token) :]
        return through / through.sum(dim=-1, keepdim=True)
    return query_to_patches(model, rolled)


def to_image_grid(maps: torch.Tensor, model: ViT) -> torch.Tensor:
    """(..., patches) weights -> (..., img_size, img_size) maps, bilinearly upsampled from the patch grid."""
    grid = model.config.grid_size
    lead = maps.shape[:-1]
    square = maps.reshape(-1, 1, grid, grid)
    padded = grid * model.config.patch_size
    upsampled = F.interpolate(square, size=(padded, padded), mode="bilinear", align_corners=False)
    size = model.config.img_size
    return upsampled[..., :size, :size].reshape(*lead, size, size)
