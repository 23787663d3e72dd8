import re

import pytest
import torch

from vitlab.config import ModelConfig
from vitlab.engine.evaluate import scores_from_logits
from vitlab.engine.train import start_new_run
from vitlab.errors import ConfigError
from vitlab.models.vit import ViT
from vitlab.recipes import resolve_run_config
from vitlab.report import plots, run_report
from vitlab.report.run_report import build_report

TINY = ["data.train_subset=256", "data.test_subset=100", "train.batch_size=64", "model.embed_dim=16", "model.depth=1"]


def _report_line(run_dir) -> str:
    build_report(run_dir)
    return (run_dir / "report.md").read_text().splitlines()[2]


def test_the_report_counts_the_epochs_trained_not_the_ones_scored(tmp_path):
    config = resolve_run_config(preset="mnist-tiny", epochs=3, overrides=[*TINY, "train.eval_every=2"])
    start_new_run(config, tmp_path / "every2").run()  # scores epochs 2 and 3
    assert re.search(r"on mnist, 3 of 3 epochs, \d+ s of training", _report_line(tmp_path / "every2"))
    report = (tmp_path / "every2" / "report.md").read_text()
    assert "| train images | 256 |" in report and "| threads |" in report  # the run's facts from run.json
    assert "| image folder fingerprint" not in report  # one a data set that is not a folder lacks: no empty row


def test_a_budgeted_run_reports_its_epochs_and_budget_not_the_ignored_epoch_count(tmp_path):
    config = resolve_run_config(preset="mnist-tiny", epochs=2, overrides=[*TINY, "train.time_budget=2"])
    trained = start_new_run(config, tmp_path / "budget").run().history[-1].epoch  # tens of epochs here
    assert f"on mnist, {trained} epoch{'s' * (trained != 1)} in a 2 s budget," in _report_line(tmp_path / "budget")


def test_attention_figures_are_titled_with_the_true_and_predicted_class(tmp_path, monkeypatch):
    model = ViT(ModelConfig(embed_dim=16, depth=1, num_heads=2, num_classes=3)).eval()
    torch.nn.init.normal_(model.head.weight)  # the zero-initialised head would predict class 0 for everything
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        predicted = model(images.float() / 255).argmax(dim=1).tolist()
    titles = []
    monkeypatch.setattr(plots, "plot_attention_overlays", lambda *args: titles.append(args[-1]))
    names = ["zero", "one", "two"]
    run_report.attention_figures(model, images, torch.tensor([2, 0]), names, [0.0], [1.0], tmp_path)
    assert titles == [
        f"Attention (cls pooling): true two, predicted {names[predicted[0]]}",
        f"Attention (cls pooling): true zero, predicted {names[predicted[1]]}",
    ]


def test_a_corrupt_run_json_is_a_one_line_error_and_a_missing_one_is_no_error(tmp_path):
    config = resolve_run_config(preset="mnist-tiny", epochs=1, overrides=TINY)
    start_new_run(config, tmp_path / "run").run()
    (tmp_path / "run" / "run.json").write_text('{"train_images": 25')  # cut short
    with pytest.raises(ConfigError, match="run.json is not the JSON object vitlab wrote"):
        build_report(tmp_path / "run")
    (tmp_path / "run" / "run.json").unlink()  # a run from before run.json existed
    assert "| train images |" not in (build_report(tmp_path / "run")).read_text()


def test_the_report_scores_the_last_checkpoint_exactly_as_the_run_scored_its_last_epoch(tmp_path):
    # In the run's precision (bf16 where the CPU has it) and evaluation batch: fp32 scoring of the same
    # weights gave a loss 4e-5 away from metrics.jsonl's, and can flip an accuracy figure too.
    overrides = ["data.train_subset=1024", "data.test_subset=500", "train.batch_size=64", "train.eval_batch_size=200"]
    config = resolve_run_config(preset="mnist-tiny", epochs=1, overrides=overrides)
    last = start_new_run(config, tmp_path / "run").run().history[-1]
    _, _, test, logits = run_report.scored_last_checkpoint(tmp_path / "run", config)
    scores = scores_from_logits(logits, test.labels)
    assert (scores.accuracy, scores.loss) == (last.test_accuracy, last.test_loss)
