"""Figures as PNG files: training curves, learning rate, confusion matrix, image grids, attention overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write a figure as PNG (creating its folder) and free it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _as_display(image: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """uint8 (C, H, W) -> an array imshow draws, and the colour map for grey images."""
    array = image.detach().cpu().numpy()
    if array.shape[0] == 1:
        return array[0], "gray"
    return np.transpose(array, (1, 2, 0)), None


def plot_curves(history: Sequence[dict], path: Path) -> Path:
    """Loss and accuracy per epoch, train and test, side by side."""
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    loss_ax.plot(epochs, [h["test_loss"] for h in history], "s-", label="test")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    acc_ax.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
    acc_ax.plot(epochs, [100 * h["test_accuracy"] for h in history], "s-", label="test")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save_figure(fig, path)


def plot_learning_rate(steps: Sequence[int], rates: Sequence[float], path: Path) -> Path:
    """The learning-rate schedule over optimiser steps."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(steps, rates)
    ax.set(xlabel="optimiser step", ylabel="learning rate", title="Learning-rate schedule")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_confusion(confusion: torch.Tensor, class_names: Sequence[str], path: Path) -> Path:
    """Confusion matrix with counts in the cells and a colour bar."""
    matrix = confusion.cpu().numpy()
    size = max(4.5, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    shown = ax.imshow(np.log1p(matrix), cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (test)")
    if len(class_names) <= 20:
        threshold = np.log1p(matrix).max() / 2
        for (row, col), count in np.ndenumerate(matrix):
            color = "white" if np.log1p(count) > threshold else "black"
            ax.text(col, row, str(count), ha="center", va="center", fontsize=7, color=color)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046)
    bar.set_label("log(1 + count)")
    return save_figure(fig, path)


def plot_per_class(accuracy: Sequence[float], class_names: Sequence[str], path: Path) -> Path:
    """Per-class test accuracy as horizontal bars."""
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(class_names) + 1.2))
    ax.barh(range(len(class_names)), [100 * a for a in accuracy], color="tab:blue")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.invert_yaxis()
    low = max(0.0, 100 * min(accuracy) - 5)
    ax.set(xlim=(low, 100), xlabel="accuracy (%)", title="Per-class test accuracy")
    for index, value in enumerate(accuracy):
        ax.text(100 * value, index, f" {100 * value:.1f}", va="center", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def plot_image_grid(images: torch.Tensor, captions: Sequence[str], path: Path, title: str, columns: int = 8) -> Path:
    """A grid of uint8 images (N, C, H, W), each with a caption."""
    count = max(len(images), 1)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.5 * columns, 1.75 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        array, cmap = _as_display(image)
        ax.imshow(array, cmap=cmap)
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_attention_overlays(
    image: torch.Tensor, maps: torch.Tensor, titles: Sequence[str], path: Path, title: str, columns: int = 6
) -> Path:
    """The input image, then each (H, W) map overlaid on it, with a shared colour bar."""
    panels = len(maps) + 1
    rows = -(-panels // min(columns, panels))
    columns = -(-panels // rows)  # rows as even as they can be: 7 panels as 4 + 3, not 6 + 1
    fig, axes = plt.subplots(rows, columns, figsize=(2.1 * columns + 0.8, 2.3 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    array, cmap = _as_display(image)
    axes.flat[0].imshow(array, cmap=cmap)
    axes.flat[0].set_title("input", fontsize=9)
    shown = None
    for ax, heat, caption in zip(list(axes.flat)[1:], maps, titles):
        ax.imshow(array, cmap=cmap)
        normalised = heat / heat.max().clamp(min=1e-12)
        shown = ax.imshow(normalised.cpu().numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
        ax.set_title(caption, fontsize=9)
    if shown is not None:
        bar = fig.colorbar(shown, ax=axes.ravel().tolist(), fraction=0.025)
        bar.set_label("attention (relative to max)")
    fig.suptitle(title)
    return save_figure(fig, path)
