"""Evaluation: accuracy, loss, top-k, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.data.tensors import to_model_input
from vitlab.engine.runtime import autocast, evaluation_mode


@dataclass
class EvalResult:
    """Scores of a model on one labelled split."""

    accuracy: float
    loss: float
    top5_accuracy: float | None  # None with 5 classes or fewer, where every label is in the top 5
    per_class_accuracy: list[float]
    confusion: torch.Tensor  # (true, predicted) counts
    num_examples: int

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict:
        """JSON-able summary; per-class accuracy keyed by class name when names are given."""
        names = list(class_names) if class_names else [str(i) for i in range(len(self.per_class_accuracy))]
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "top5_accuracy": self.top5_accuracy,
            "num_examples": self.num_examples,
            "per_class_accuracy": dict(zip(names, self.per_class_accuracy)),
        }


def batched_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    img_size: int,
    channels: int,
    num_classes: int,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """fp32 CPU logits of `forward` (normalised images -> logits) for uint8 (or [0, 1] float) images, in
    batches; `on_batch(n)` is told of each batch of n images done (a progress bar)."""
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = to_model_input(images[start : start + batch_size].to(device), mean, std, img_size, channels)
        outputs.append(forward(batch).float().cpu())
        if on_batch is not None:
            on_batch(len(batch))
    return torch.cat(outputs) if outputs else torch.empty(0, num_classes)


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 1000,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """fp32 logits of a model for uint8 (or [0, 1] float) images, in batches, on the model's device."""
    device = device or next(model.parameters()).device
    config = model.config

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with autocast(device, dtype):
            return model(batch)

    with evaluation_mode(model):
        return batched_logits(
            forward,
            images,
            mean=mean,
            std=std,
            img_size=config.img_size,
            channels=config.in_channels,
            num_classes=config.num_classes,
            batch_size=batch_size,
            device=device,
            on_batch=on_batch,
        )


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 1000,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Score a model on labelled uint8 images (`on_batch` as in batched_logits)."""
    logits = predict_logits(
        model, images, mean=mean, std=std, batch_size=batch_size, device=device, dtype=dtype, on_batch=on_batch
    )
    return scores_from_logits(logits, labels)


def scores_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> EvalResult:
    """Accuracy, mean cross-entropy, top-5, per-class accuracy and confusion matrix from logits."""
    num_classes = logits.shape[1]
    labels = labels.to(logits.device)
    predicted = logits.argmax(dim=1)
    confusion = torch.bincount(labels * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, -1)
    per_class_total = confusion.sum(dim=1).clamp(min=1)
    top5 = None
    if num_classes > 5:
        top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).float().mean().item()
    return EvalResult(
        accuracy=(predicted == labels).float().mean().item(),
        loss=F.cross_entropy(logits, labels).item(),
        top5_accuracy=top5,
        per_class_accuracy=(confusion.diag() / per_class_total).tolist(),
        confusion=confusion,
        num_examples=len(labels),
    )
