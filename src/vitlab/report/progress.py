"""Console output of a training run: a progress bar with loss, accuracy, images/s and ETA on stderr."""

from __future__ import annotations

from types import TracebackType

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vitlab.engine.train import EpochStats
from vitlab.terminal import draws_live, progress_console


class TrainingProgress:
    """A rich progress bar over all steps of a run, plus one printed line per finished epoch."""

    UNITS = 1000  # the bar counts thousandths of the run, by steps or by time budget

    def __init__(self, total_epochs: int | None, start_fraction: float = 0.0, enabled: bool = True) -> None:
        """total_epochs is None for a run that ends on a time budget."""
        self.console = progress_console()
        self.epochs_label = f"/{total_epochs}" if total_epochs else ""
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}{task.fields[epochs]}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not (enabled and draws_live(self.console)),  # the epoch lines are printed either way
        )
        self.task = self.progress.add_task(
            "train",
            total=self.UNITS,
            completed=start_fraction * self.UNITS,
            epoch="",
            epochs=self.epochs_label,
            status="",
        )

    def __enter__(self) -> TrainingProgress:
        self.progress.start()
        return self

    def __exit__(self, kind: type | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.stop()

    def on_step(self, epoch: int, fraction: float, stats: dict[str, float]) -> None:
        """Advance the bar to this fraction of the run."""
        self.progress.update(
            self.task,
            completed=fraction * self.UNITS,
            epoch=epoch + 1,
            status=f"loss {stats['loss']:.4f}  acc {stats['accuracy']:.2%}  {stats['images_per_second']:,.0f} img/s",
        )

    def on_evaluation(self, label: str, fraction: float) -> None:
        """Show how far the end-of-epoch pass over the test set has gone: the bar itself stands still
        meanwhile, for minutes on a large test set and a large model."""
        self.progress.update(self.task, status=f"{label} {fraction:.0%}")

    def on_epoch(self, stats: EpochStats) -> None:
        """Print a one-line summary of a finished epoch above the bar."""
        if self.enabled:
            ema = f" (EMA {stats.ema_test_accuracy:.2%})" if stats.ema_test_accuracy is not None else ""
            # soft_wrap: rich would otherwise break the line at 80 columns whenever stderr is a pipe or a
            # log file, and one line per epoch is what people grep and tail.
            self.progress.console.print(
                f"epoch {stats.epoch:>3}{self.epochs_label}  train loss {stats.train_loss:.4f} "
                f"acc {stats.train_accuracy:.2%}  test loss {stats.test_loss:.4f} acc {stats.test_accuracy:.2%}{ema}  "
                f"lr {stats.lr:.2e}  {stats.images_per_second:,.0f} img/s  {stats.seconds:.1f}s",
                soft_wrap=True,
                highlight=False,
            )
