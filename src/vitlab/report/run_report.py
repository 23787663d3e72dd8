"""A training run's report: `report.md` with PNG figures in `report/`, rebuilt from the run directory alone."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from vitlab.config import RunConfig, load_run_config, with_recipe
from vitlab.data.datasets import open_dataset
from vitlab.data.sources import ImageDataset, evenly_spread
from vitlab.data.tensors import num_batches, to_model_input
from vitlab.engine.checkpoint import load_checkpoint, scoring_precision
from vitlab.engine.evaluate import predict_logits, scores_from_logits
from vitlab.engine.runtime import autocast_dtype, resolve_device
from vitlab.engine.schedule import warmup_cosine
from vitlab.engine.train import enclosing_run_hint, read_metrics
from vitlab.errors import ConfigError
from vitlab.explain.attention import layer_maps, rollout_map, to_image_grid
from vitlab.models.vit import ViT
from vitlab.report import plots
from vitlab.terminal import counted

MISCLASSIFIED_SHOWN = 24
ATTENTION_EXAMPLES = 3


def spread(indices: torch.Tensor, count: int) -> torch.Tensor:
    """Up to `count` of the indices, evenly spaced (test sets are often sorted by class)."""
    return indices[evenly_spread(len(indices), count)]


def most_confused_pairs(confusion: torch.Tensor, class_names: list[str], count: int = 5) -> list[tuple[str, str, int]]:
    """The off-diagonal cells with the most errors: (true class, predicted class, count)."""
    off = confusion.clone()
    off.fill_diagonal_(0)
    values, flat = off.flatten().topk(min(count, off.numel()))
    size = confusion.shape[1]
    return [
        (class_names[i // size], class_names[i % size], int(v)) for v, i in zip(values.tolist(), flat.tolist()) if v > 0
    ]


def attention_figures(
    model: ViT,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    mean: list[float],
    std: list[float],
    folder: Path,
) -> list[Path]:
    """Per-layer and rollout attention overlays for a few labelled uint8 images, titled with the true and
    predicted class."""
    config = model.config
    inputs = to_model_input(images, mean, std, config.img_size, config.in_channels)
    with torch.no_grad():
        intermediates = model(inputs, return_intermediates=True)
    per_layer = to_image_grid(layer_maps(model, intermediates), model)  # (layers, batch, H, W)
    rolled = to_image_grid(rollout_map(model, intermediates), model)  # (batch, H, W)
    shown = torch.nn.functional.interpolate(images.float(), size=config.img_size).to(torch.uint8)
    predicted = intermediates["logits"].argmax(dim=1).tolist()
    paths = []
    for index in range(len(images)):
        maps = torch.cat([per_layer[:, index], rolled[index : index + 1]])
        titles = [f"layer {layer}" for layer in range(config.depth)] + ["rollout"]
        title = (
            f"Attention ({config.pool} pooling): true {class_names[labels[index]]}, "
            f"predicted {class_names[predicted[index]]}"
        )
        paths.append(
            plots.plot_attention_overlays(shown[index], maps, titles, folder / f"attention_{index}.png", title)
        )
    return paths


# run.json keys whose names alone do not say what their values are
FACT_LABELS = {"folder_state": "image folder fingerprint (changes when its files do)"}


def run_facts(run_dir: Path) -> dict:
    """run.json's figures (images, steps per epoch, device...), or {} for a run written before it existed."""
    path = run_dir / "run.json"
    if not path.exists():
        return {}
    try:
        facts = json.loads(path.read_text(errors="replace"))
    except ValueError:
        facts = None
    if not isinstance(facts, dict):
        raise ConfigError(f"{path} is not the JSON object vitlab wrote; delete it to report without those figures")
    return facts


def scored_last_checkpoint(run_dir: Path, config: RunConfig) -> tuple[nn.Module, dict, ImageDataset, torch.Tensor]:
    """The run's last checkpoint, its metadata, the test split and the checkpoint's logits on it.

    Scored as the run scored each epoch, on its device where this machine has it, in its precision and
    evaluation batch, so that the report agrees with metrics.jsonl and `vitlab eval` (another device or
    fp32 would round the same weights' logits differently).
    """
    model, metadata = load_checkpoint(run_dir / "checkpoints" / "last.safetensors")
    try:
        device = resolve_device(config.train.device)
    except ConfigError:  # a GPU run reported on where there is no GPU
        device = torch.device("cpu")
    test = open_dataset(config.data, config.model.in_channels, config.model.img_size, config.train.seed, ("test",)).test
    logits = predict_logits(
        model.to(device),
        test.images,
        mean=metadata["mean"],
        std=metadata["std"],
        batch_size=config.train.eval_batch_size,
        dtype=autocast_dtype(scoring_precision(metadata), device),
    )
    return model.cpu(), metadata, test, logits  # the figures of a few images are drawn on the CPU


def build_report(run_dir: str | Path) -> Path:
    """Write run_dir/report.md and run_dir/report/*.png from the run's config, metrics and last checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists() or not (run_dir / "metrics.jsonl").exists():
        raise ConfigError(
            f"{run_dir} is not a finished run directory (needs config.yaml and metrics.jsonl)"
            + enclosing_run_hint(run_dir)
        )
    config = load_run_config(run_dir / "config.yaml")
    history = [vars(stats) for stats in read_metrics(run_dir)]
    if not history:
        raise ConfigError(f"{run_dir} has no finished epoch to report on")
    model, metadata, test, logits = scored_last_checkpoint(run_dir, config)
    names = list(metadata["class_names"])
    scores = scores_from_logits(logits, test.labels)
    predicted = logits.argmax(dim=1)
    folder = run_dir / "report"

    plots.plot_curves(history, folder / "curves.png")
    run_info = run_facts(run_dir)
    steps_per_epoch = run_info.get("steps_per_epoch") or num_batches(60000, config.train.batch_size, drop_last=True)
    if config.train.time_budget:  # the schedule ran on time: show the rate each epoch ended with
        steps = [h["epoch"] * steps_per_epoch for h in history]
        rates = [h["lr"] for h in history]
    else:
        total = config.train.epochs * steps_per_epoch
        warmup = int(round(config.train.warmup_epochs * steps_per_epoch))
        steps = list(range(0, total, max(1, total // 400)))
        rates = [warmup_cosine(s, total, warmup, config.train.lr, config.train.min_lr) for s in steps]
    plots.plot_learning_rate(steps, rates, folder / "lr.png")
    plots.plot_confusion(scores.confusion, names, folder / "confusion.png")
    plots.plot_per_class(scores.per_class_accuracy, names, folder / "per_class.png")
    wrong = spread((predicted != test.labels).nonzero().flatten(), MISCLASSIFIED_SHOWN)
    captions = [f"true {names[test.labels[i]]}\npred {names[predicted[i]]}" for i in wrong.tolist()]
    plots.plot_image_grid(test.images[wrong], captions, folder / "misclassified.png", "Misclassified test images")
    has_attention = config.model.arch == "vit"
    if has_attention:
        examples = spread(torch.arange(len(test)), ATTENTION_EXAMPLES)
        attention_figures(
            model, test.images[examples], test.labels[examples], names, metadata["mean"], metadata["std"], folder
        )

    pairs = most_confused_pairs(scores.confusion, names)
    total_seconds = sum(h["seconds"] for h in history)
    best = max(history, key=lambda h: h["test_accuracy"])
    facts = {"test_images": scores.num_examples} | run_info  # run.json's figures, for a run that has one
    # The last scored epoch is the last one trained (a run scores its last epoch whatever train.eval_every says).
    trained = history[-1]["epoch"]
    if config.train.time_budget:
        length = f"{counted(trained, 'epoch')} in a {config.train.time_budget:.0f} s budget"
    else:
        length = f"{trained} of {config.train.epochs} epochs"
    lines = [
        f"# Training report: {run_dir.name}",
        "",
        f"{config.preset or 'custom'} {config.model.arch} on {config.data.dataset}{with_recipe(config.recipe)}, {length}, "
        f"{total_seconds:.0f} s of training and evaluation.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| final test accuracy (last checkpoint) | {scores.accuracy:.2%} |",
        f"| best test accuracy | {best['test_accuracy']:.2%} (epoch {best['epoch']}) |",
        f"| final test loss | {scores.loss:.4f} |",
        *([f"| top-5 accuracy | {scores.top5_accuracy:.2%} |"] if scores.top5_accuracy is not None else []),
        f"| training speed (last epoch) | {history[-1]['images_per_second']:,.0f} images/s |",
        *[
            f"| {FACT_LABELS.get(key, key.replace('_', ' '))} | {f'{value:,}' if isinstance(value, int) else value} |"
            for key, value in facts.items()
            if value not in ("", None)  # a data set that is not a folder has no folder state
        ],
        "",
        "## Curves",
        "",
        "![loss and accuracy](report/curves.png)",
        "",
        "![learning rate](report/lr.png)",
        "",
        "## Errors",
        "",
        "![confusion matrix](report/confusion.png)",
        "",
        "![per-class accuracy](report/per_class.png)",
        "",
        "Most confused pairs (true -> predicted: count):",
        "",
        *([f"- {t} -> {p}: {n}" for t, p, n in pairs] or ["- none"]),
        "",
        "![misclassified test images](report/misclassified.png)",
        "",
        *(
            [
                "## Attention",
                "",
                "Head-averaged attention from the pooling query to each patch, per layer, and attention rollout.",
                "",
                *[f"![attention {i}](report/attention_{i}.png)" for i in range(min(ATTENTION_EXAMPLES, len(test)))],
                "",
            ]
            if has_attention
            else []
        ),
        "## Epochs",
        "",
        "| epoch | train loss | train acc | test loss | test acc | lr | images/s | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *[
            f"| {h['epoch']} | {h['train_loss']:.4f} | {h['train_accuracy']:.2%} | {h['test_loss']:.4f} | "
            f"{h['test_accuracy']:.2%} | {h['lr']:.2e} | {h['images_per_second']:,.0f} | {h['seconds']:.1f} |"
            for h in history
        ],
        "",
        "## Config",
        "",
        "```yaml",
        (run_dir / "config.yaml").read_text().strip(),
        "```",
        "",
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
