import re

from vitlab.engine.train import start_new_run
from vitlab.recipes import resolve_run_config
from vitlab.report.run_report import build_report

TINY = ["data.train_subset=256", "data.test_subset=100", "train.batch_size=64", "model.embed_dim=16", "model.depth=1"]


def _report_line(run_dir) -> str:
    build_report(run_dir)
    return (run_dir / "report.md").read_text().splitlines()[2]


def test_the_report_counts_the_epochs_trained_not_the_ones_scored(tmp_path):
    config = resolve_run_config(preset="mnist-tiny", epochs=3, overrides=[*TINY, "train.eval_every=2"])
    start_new_run(config, tmp_path / "every2").run()  # scores epochs 2 and 3
    assert re.search(r"on mnist, 3 of 3 epochs, \d+ s of training", _report_line(tmp_path / "every2"))


def test_a_budgeted_run_reports_its_epochs_and_budget_not_the_ignored_epoch_count(tmp_path):
    config = resolve_run_config(preset="mnist-tiny", epochs=2, overrides=[*TINY, "train.time_budget=2"])
    trained = start_new_run(config, tmp_path / "budget").run().history[-1].epoch  # tens of epochs here
    assert f"on mnist, {trained} epoch{'s' * (trained != 1)} in a 2 s budget," in _report_line(tmp_path / "budget")
