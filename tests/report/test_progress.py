from vitlab.engine.train import EpochStats
from vitlab.report.progress import TrainingProgress


def epoch_stats(ema: float | None) -> EpochStats:
    return EpochStats(
        epoch=3,
        train_loss=0.51234,
        train_accuracy=0.875,
        test_loss=0.41234,
        test_accuracy=0.9012,
        lr=1.5e-3,
        seconds=12.3,
        images_per_second=3456.0,
        ema_test_accuracy=ema,
    )


def test_each_epoch_is_one_whole_line_on_a_pipe(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # what rich assumes for a pipe or a log file
    progress = TrainingProgress(total_epochs=36)
    progress.on_epoch(epoch_stats(ema=None))
    progress.on_epoch(epoch_stats(ema=0.9123))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("epoch   3/36  train loss 0.5123 acc 87.50%  test loss 0.4123 acc 90.12%  lr 1.50e-03")
    assert lines[0].endswith("3,456 img/s  12.3s")
    assert "acc 90.12% (EMA 91.23%)  lr" in lines[1]


def test_on_a_pipe_only_the_epoch_lines_are_printed_not_the_bar(capsys):
    with TrainingProgress(total_epochs=36) as progress:
        progress.on_step(2, 0.08, {"loss": 0.5, "accuracy": 0.9, "images_per_second": 3000.0})
        progress.on_epoch(epoch_stats(ema=None))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("epoch   3/36  train loss")  # no bar cut at 80 columns


def test_a_disabled_progress_prints_nothing(capsys):
    TrainingProgress(total_epochs=2, enabled=False).on_epoch(epoch_stats(ema=None))
    assert capsys.readouterr().err == ""


def test_the_pass_over_the_test_set_shows_how_far_it_has_gone_where_the_bar_stands_still():
    progress = TrainingProgress(total_epochs=36)
    progress.on_step(2, 0.08, {"loss": 0.5, "accuracy": 0.9, "images_per_second": 3000.0})
    (task,) = progress.progress.tasks
    assert task.fields["status"] == "loss 0.5000  acc 90.00%  3,000 img/s"
    progress.on_evaluation("testing EMA", 0.4)
    assert task.fields["status"] == "testing EMA 40%" and task.completed == 0.08 * TrainingProgress.UNITS
    progress.on_step(3, 0.09, {"loss": 0.4, "accuracy": 0.91, "images_per_second": 3100.0})
    assert task.fields["status"].startswith("loss 0.4000")
