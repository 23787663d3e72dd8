import json

import pytest

from vitlab.engine.compare import continues_run, run_contender
from vitlab.errors import ConfigError
from vitlab.recipes import resolve_run_config

TINY = ["data.train_subset=500", "data.test_subset=100", "train.batch_size=50", "model.embed_dim=16", "model.depth=1"]


def tiny(epochs: int = 2, seed: int = 1):
    return resolve_run_config(preset="mnist-tiny", epochs=epochs, seed=seed, overrides=TINY)


def epochs_recorded(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_stopped_contender_continues_and_a_finished_one_trains_no_further(tmp_path):
    run_dir = tmp_path / "cmp" / "mnist-tiny"

    def stop_after_the_first_epoch(stats):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_contender("mnist-tiny", tiny(), run_dir, lambda trainer: trainer.run(on_epoch=stop_after_the_first_epoch))
    first = epochs_recorded(run_dir)
    assert [line["epoch"] for line in first] == [1]
    assert continues_run(run_dir, tiny(), "mnist-tiny")
    result = run_contender("mnist-tiny", tiny(), run_dir, resume=True)
    assert epochs_recorded(run_dir)[0] == first[0]  # epoch 1 kept, not trained again
    assert [line["epoch"] for line in epochs_recorded(run_dir)] == [1, 2]
    assert [accuracy for _, accuracy in result.curve] == [line["test_accuracy"] for line in epochs_recorded(run_dir)]
    again = run_contender("mnist-tiny", tiny(), run_dir, resume=True)  # finished: measured as it is
    assert len(epochs_recorded(run_dir)) == 2 and again.test_accuracy == result.test_accuracy
    with pytest.raises(ConfigError, match="holds a run of mnist-tiny with other settings; pick another --out"):
        continues_run(run_dir, tiny(seed=2), "mnist-tiny")
    assert not continues_run(tmp_path / "cmp" / "resnet-small", tiny(), "resnet-small")
