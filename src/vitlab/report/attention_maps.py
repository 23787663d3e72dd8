"""`vitlab attention`'s figures: for each image, its input, attention per layer, every head of one layer, rollout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitlab.data.images import load_image
from vitlab.data.tensors import to_model_input
from vitlab.errors import ConfigError
from vitlab.explain.attention import head_maps, layer_maps, rollout_map, to_image_grid
from vitlab.models.vit import ViT
from vitlab.report import plots


@dataclass
class AttentionFigures:
    """The PNG files written and the class predicted for each image."""

    files: list[Path]
    predicted: list[str]


def write_attention_maps(
    model: ViT,
    metadata: dict[str, Any],
    image_paths: list[str],
    out: Path,
    layer: int = -1,
    invert: bool = False,
) -> AttentionFigures:
    """Four PNGs per image in `out`; `layer` (negative counts from the end) picks the layer whose heads are drawn."""
    config = model.config
    if config.arch != "vit":
        raise ConfigError(f"a {config.arch} has no attention to draw")
    chosen = layer if layer >= 0 else config.depth + layer
    if not 0 <= chosen < config.depth:
        raise ConfigError(f"--layer {layer} is out of range for a model of depth {config.depth}")
    images = torch.stack([load_image(path, config.in_channels, config.img_size) for path in image_paths])
    if invert:
        images = 255 - images
    with torch.no_grad():
        intermediates = model(
            to_model_input(images, metadata["mean"], metadata["std"], config.img_size, config.in_channels),
            return_intermediates=True,
        )
    per_layer = to_image_grid(layer_maps(model, intermediates), model)
    heads = to_image_grid(head_maps(model, intermediates, chosen), model)
    rolled = to_image_grid(rollout_map(model, intermediates), model)
    names = metadata.get("class_names") or [str(i) for i in range(config.num_classes)]
    predicted = [names[i] for i in intermediates["logits"].argmax(dim=1).tolist()]
    out = Path(out)
    written = []
    for index, path in enumerate(image_paths):
        stem = f"{index:02d}_{Path(path).stem}"
        label = f"{Path(path).name}: predicted {predicted[index]}"
        image = images[index]
        written.append(plots.plot_image_grid(image[None], [label], out / f"{stem}_input.png", "Input", columns=1))
        panels = [
            (
                per_layer[:, index],
                [f"layer {i}" for i in range(config.depth)],
                "layers",
                "attention per layer (heads averaged)",
            ),
            (
                heads[index],
                [f"head {h}" for h in range(config.num_heads)],
                f"heads_layer{chosen}",
                f"every head of layer {chosen}",
            ),
            (rolled[index : index + 1], ["rollout"], "rollout", "attention rollout"),
        ]
        for maps, titles, suffix, title in panels:
            written.append(
                plots.plot_attention_overlays(image, maps, titles, out / f"{stem}_{suffix}.png", f"{label}: {title}")
            )
    return AttentionFigures(written, predicted)
