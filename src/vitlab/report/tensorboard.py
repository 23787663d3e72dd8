"""Metrics as TensorBoard event files, when the optional `tensorboard` package is installed."""

from __future__ import annotations

from pathlib import Path

from vitlab.engine.train import EpochStats


class TensorBoardLogger:
    """Writes each epoch's metrics under RUN/tensorboard; does nothing without the tensorboard package."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the extra is not installed: metrics.jsonl still has everything
            self.writer = None
            return
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    @property
    def enabled(self) -> bool:
        """Whether event files are being written."""
        return self.writer is not None

    def on_epoch(self, stats: EpochStats) -> None:
        """Record one epoch's losses, accuracies, learning rate and speed."""
        if self.writer is None:
            return
        scalars = {
            "loss/train": stats.train_loss,
            "loss/test": stats.test_loss,
            "accuracy/train": stats.train_accuracy,
            "accuracy/test": stats.test_accuracy,
            "lr": stats.lr,
            "images_per_second": stats.images_per_second,
        }
        if stats.ema_test_accuracy is not None:
            scalars["accuracy/test_ema"] = stats.ema_test_accuracy
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, stats.epoch)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
