import json
import time

import pytest
import torch
import torch.nn.functional as F

from vitlab.config import RunConfig
from vitlab.engine.checkpoint import load_checkpoint
from vitlab.engine.runtime import autocast, compiled
from vitlab.engine.train import Trainer, prepare_run_dir, read_metrics, trainer_for_resume
from vitlab.errors import CheckpointError, ConfigError
from vitlab.models.registry import build_model, model_config
from vitlab.recipes import resolve_run_config


def quick_config(epochs: int = 2, train_images: int = 3000, **train) -> RunConfig:
    """mnist-tiny on a 3,000-image slice (by default): seconds per epoch on two cores."""
    overrides = [
        f"data.train_subset={train_images}",
        "data.test_subset=500",
        "train.batch_size=32",
        "train.warmup_epochs=0.5",
        *(f"train.{k}={v}" for k, v in train.items()),
    ]
    return resolve_run_config(preset="mnist-tiny", epochs=epochs, seed=1, overrides=overrides)


def new_trainer(tmp_path, config: RunConfig, name: str = "run") -> Trainer:
    run_dir = tmp_path / name
    prepare_run_dir(config, run_dir)
    return Trainer(config, run_dir)


def test_short_training_on_mnist_learns_well_above_chance(tmp_path):
    # 12,000 images, no augmentation: about 10 s here, and ~80% test accuracy (seed 1).
    overrides = ["data.train_subset=12000", "data.test_subset=500", "data.augment=false", "train.batch_size=128"]
    overrides += ["train.lr=0.005", "train.warmup_epochs=0.3", "train.label_smoothing=0"]
    config = resolve_run_config(preset="mnist-tiny", epochs=3, seed=1, overrides=overrides)
    trainer = new_trainer(tmp_path, config)
    result = trainer.run()
    assert result.final.accuracy > 0.6, result.final.accuracy  # chance is 0.1
    assert result.history[-1].train_loss < result.history[0].train_loss
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "mnist-tiny" in saved and "train_subset: 12000" in saved


def test_same_seed_repeats_the_run_exactly(tmp_path):
    first = new_trainer(tmp_path, quick_config(epochs=1), "a").run()
    second = new_trainer(tmp_path, quick_config(epochs=1), "b").run()
    assert first.history[0].train_loss == second.history[0].train_loss
    assert first.final.accuracy == second.final.accuracy


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_continues_exactly_where_the_run_stopped(tmp_path, ema_decay):
    straight = new_trainer(tmp_path, quick_config(epochs=2, ema_decay=ema_decay), "straight")
    straight.run()

    def interrupt(stats):
        raise KeyboardInterrupt  # Ctrl-C just after the first epoch's checkpoints were written

    interrupted = new_trainer(tmp_path, quick_config(epochs=2, ema_decay=ema_decay), "resumed")
    with pytest.raises(KeyboardInterrupt):
        interrupted.run(on_epoch=interrupt)
    resumed = trainer_for_resume(tmp_path / "resumed")
    assert resumed.start_epoch == 1
    resumed.run()

    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    if ema_decay:
        for a, b in zip(straight.ema_model.parameters(), resumed.ema_model.parameters()):
            torch.testing.assert_close(a, b)
    epochs = [json.loads(x)["epoch"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_a_torn_last_metrics_line_is_an_unfinished_epoch_and_a_bad_earlier_line_an_error(tmp_path):
    new_trainer(tmp_path, quick_config(epochs=1, train_images=500)).run()
    metrics = tmp_path / "run" / "metrics.jsonl"
    with open(metrics, "a") as handle:
        handle.write('{"epoch": 2, "train_lo')  # a write cut short, as by a full disk
    assert [s.epoch for s in read_metrics(tmp_path / "run")] == [1]
    trainer_for_resume(tmp_path / "run", epochs=2).run()
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2]
    metrics.write_text("not json\n" + metrics.read_text())
    with pytest.raises(ConfigError, match="metrics.jsonl line 1 is not a line of epoch metrics"):
        read_metrics(tmp_path / "run")


def test_a_damaged_resume_file_says_the_last_checkpoint_still_serves(tmp_path):
    new_trainer(tmp_path, quick_config(epochs=1, train_images=500)).run()
    resume = tmp_path / "run" / "checkpoints" / "resume.safetensors"
    resume.write_bytes(resume.read_bytes()[:3000])  # cut short by something other than vitlab
    with pytest.raises(CheckpointError, match="cannot resume, but checkpoints/last.safetensors still serves"):
        trainer_for_resume(tmp_path / "run", epochs=2)
    load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")  # as the message says


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    trainer = new_trainer(tmp_path, quick_config(epochs=1))
    trainer.run()
    model, metadata = load_checkpoint(tmp_path / "run")
    images = torch.randn(8, 1, 28, 28)
    trainer.model.cpu().eval()  # where the run trained on a GPU, compared on the CPU
    torch.testing.assert_close(model(images), trainer.model(images), rtol=0, atol=0)
    assert metadata["class_names"] == [str(i) for i in range(10)]
    assert metadata["dataset"] == "mnist"


def test_existing_run_directory_is_never_overwritten(tmp_path):
    trainer = new_trainer(tmp_path, quick_config(epochs=1))
    trainer.run()
    with pytest.raises(ConfigError, match="--resume"):
        prepare_run_dir(quick_config(epochs=1), tmp_path / "run")


def recorded_learning_rates(trainer: Trainer) -> list[float]:
    """The learning rate of each step the trainer takes from now on, in a list that fills as it trains."""
    seen = []
    original = trainer.learning_rate

    def recording(step, elapsed):
        seen.append(original(step, elapsed))
        return seen[-1]

    trainer.learning_rate = recording
    return seen


def test_time_budget_ends_the_run_on_time_with_the_schedule_decayed(tmp_path):
    config = quick_config(epochs=1, time_budget=4.0, min_lr=0.0)
    trainer = new_trainer(tmp_path, config)
    seen_lrs = recorded_learning_rates(trainer)
    started = time.perf_counter()
    result = trainer.run()
    # Ends within one step plus one evaluation of the budget, whatever train.epochs says.
    assert time.perf_counter() - started < 4.0 + 3.0
    assert result.history[-1].elapsed >= 3.0
    assert max(seen_lrs) == pytest.approx(config.train.lr, rel=0.05)
    assert seen_lrs[-1] < 0.1 * max(seen_lrs)  # decayed by the time the budget ran out


def test_a_budget_shorter_than_the_warm_up_still_reaches_the_learning_rate_and_decays(tmp_path):
    # 50 epochs of warm-up in a 3 s budget: the warm-up ends by a tenth of the budget instead.
    config = quick_config(epochs=1, train_images=500, time_budget=3.0, warmup_epochs=50, min_lr=0.0)
    trainer = new_trainer(tmp_path, config)
    seen_lrs = recorded_learning_rates(trainer)
    trainer.run()
    assert max(seen_lrs) == pytest.approx(config.train.lr, rel=0.01)
    assert seen_lrs.index(max(seen_lrs)) < len(seen_lrs) / 2 and seen_lrs[-1] < 0.1 * config.train.lr
    assert 0.3 <= trainer.warmup_done_at < 1.5  # by time: 50 epochs of steps never end in 3 s


def test_a_budgeted_run_resumes_its_decay_where_it_stopped_not_from_the_top(tmp_path):
    config = quick_config(epochs=1, train_images=500, time_budget=60.0)

    def interrupt(stats):
        raise KeyboardInterrupt  # Ctrl-C after the first epoch, its warm-up (half an epoch) done

    interrupted = new_trainer(tmp_path, config)
    with pytest.raises(KeyboardInterrupt):
        interrupted.run(on_epoch=interrupt)
    resumed = trainer_for_resume(tmp_path / "run")
    assert resumed.warmup_done_at == interrupted.warmup_done_at is not None
    later = resumed.steps_per_epoch * 5
    assert resumed.learning_rate(later, elapsed=45.0) == interrupted.learning_rate(later, elapsed=45.0)
    assert resumed.learning_rate(later, elapsed=45.0) < 0.2 * config.train.lr


def test_a_finished_budgeted_run_resumed_is_measured_as_it_is_not_trained_further(tmp_path):
    # What compare does with a model whose run finished before the comparison was stopped.
    finished = new_trainer(tmp_path, quick_config(epochs=1, train_images=500, time_budget=2.0)).run()
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    last, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    with pytest.raises(ConfigError, match="time budget of 2s, which --epochs does not change"):
        trainer_for_resume(tmp_path / "run", epochs=5)
    resumed = trainer_for_resume(tmp_path / "run")
    again = resumed.run()
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics  # no epoch of one more step
    assert len(again.history) == len(finished.history)
    assert again.final.accuracy == finished.history[-1].test_accuracy
    assert again.seconds == finished.history[-1].elapsed  # the run's time, not that of scoring it again
    for name, value in last.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name].cpu()), name


def test_ema_weights_are_evaluated_and_saved_beside_the_raw_weights(tmp_path):
    trainer = new_trainer(tmp_path, quick_config(epochs=1, ema_decay=0.99, eval_batch_size=200))
    passes = []
    result = trainer.run(on_evaluation=lambda label, fraction: passes.append((label, fraction)))
    # each pass over the 500 test images is followed batch by batch (the progress bar shows it)
    assert passes == [(label, done / 500) for label in ("testing", "testing EMA") for done in (200, 400, 500)]
    stats = result.history[-1]
    assert stats.ema_test_accuracy is not None and 0.0 <= stats.ema_test_accuracy <= 1.0
    ema, metadata = load_checkpoint(tmp_path / "run" / "checkpoints" / "ema.safetensors")
    assert metadata["weights"] == "ema"
    raw = {name: value.cpu() for name, value in trainer.model.state_dict().items()}
    assert any(not torch.equal(value, raw[name]) for name, value in ema.state_dict().items())
    _, best = load_checkpoint(tmp_path / "run")
    assert best["weights"] in ("raw", "ema")
    assert best["metrics"]["test_accuracy"] == max(stats.test_accuracy, stats.ema_test_accuracy)


def test_eval_every_skips_evaluations_but_always_scores_the_last_epoch(tmp_path):
    trainer = new_trainer(tmp_path, quick_config(epochs=3, eval_every=2))
    finished_passes = []
    result = trainer.run(on_evaluation=lambda label, fraction: fraction == 1.0 and finished_passes.append(label))
    assert [s.epoch for s in result.history] == [2, 3]  # epoch 1 skipped, the last one always scored
    assert result.epochs == 3  # what `vitlab train --json` reports, not the two scored
    assert finished_passes == ["testing", "testing"]
    resumed = trainer_for_resume(tmp_path / "run", epochs=4)  # the resume state moved on after epoch 3
    assert resumed.start_epoch == 3


def test_a_budgeted_run_scores_the_epoch_its_budget_ends_in(tmp_path):
    result = new_trainer(tmp_path, quick_config(epochs=1, time_budget=3.0, eval_every=1000)).run()
    assert len(result.history) == 1 and result.history[-1].elapsed >= 3.0
    assert result.final.accuracy == result.history[-1].test_accuracy


def test_a_budget_that_ends_between_an_unscored_epoch_and_the_next_still_scores_the_run(tmp_path):
    # The budget check after an epoch says "not yet", its evaluation is skipped, and the budget runs
    # out before the next epoch's first step: that epoch trains a step and is scored, not lost.
    budget = 3.0
    trainer = new_trainer(tmp_path, quick_config(epochs=1, train_images=500, time_budget=budget, eval_every=1000))
    original = trainer.is_last_epoch

    def budget_ends_right_after_the_check(epoch, started):
        last = original(epoch, started)
        if not last:
            time.sleep(max(budget - (time.perf_counter() - started), 0.0) + 0.01)
        return last

    trainer.is_last_epoch = budget_ends_right_after_the_check
    result = trainer.run()
    assert [s.epoch for s in result.history] == [2] and result.history[-1].elapsed >= budget
    assert [s.epoch for s in read_metrics(tmp_path / "run")] == [2]
    assert result.final.accuracy == result.history[-1].test_accuracy


def test_compiled_training_follows_the_eager_run(tmp_path):
    # torch.compile (inductor) computes the same function as the eager model: one epoch from the
    # same seed ends at the same loss, and the checkpoint keeps the eager model's parameter names.
    # In fp32 and 20 steps: the two differ by summation order alone (~1e-6 a step), and these first
    # epochs sit on a loss plateau that amplifies any difference: over 94 steps fp32 runs ended 1-3%
    # apart, bf16 ones 4% (here 20 steps: 3e-5).
    config = {"epochs": 1, "train_images": 640, "precision": "fp32", "device": "cpu"}  # tolerances measured there
    eager = new_trainer(tmp_path, quick_config(**config), "eager").run()
    compiled = new_trainer(tmp_path, quick_config(**config, compile="true"), "compiled").run()
    assert compiled.history[0].train_loss == pytest.approx(eager.history[0].train_loss, rel=1e-3)
    assert abs(compiled.final.accuracy - eager.final.accuracy) < 0.02
    model, _ = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.safetensors")
    assert model.config.embed_dim == 64


def test_a_compiled_bf16_step_is_as_close_to_fp32_as_the_eager_one():
    # The bf16 step that train.compile runs: its loss and gradients stay within bf16 rounding of the
    # fp32 step, as the eager bf16 step's do (both measured ~0.5% here; a wrong graph is far off).
    torch.manual_seed(0)
    model = build_model(model_config("mnist-tiny"))
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.05)  # no zero head: every gradient is non-trivial
    images, labels = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))

    def step(module: torch.nn.Module, bf16: bool) -> tuple[float, torch.Tensor]:
        model.zero_grad()
        with autocast(torch.device("cpu"), torch.bfloat16 if bf16 else None):
            loss = F.cross_entropy(module(images).float(), labels)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    reference_loss, reference_grads = step(model, bf16=False)
    for module in (model, compiled(model, torch.device("cpu"))):
        loss, grads = step(module, bf16=True)
        assert loss == pytest.approx(reference_loss, rel=0.01)
        assert (grads - reference_grads).norm() / reference_grads.norm() < 0.02


def test_compiling_on_cpu_without_a_compiler_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        new_trainer(tmp_path, quick_config(epochs=1, compile="true", device="cpu"))


def test_a_note_says_how_many_images_whole_batches_leave_out_and_a_batch_size_that_would_not(tmp_path):
    uneven = new_trainer(tmp_path, quick_config(epochs=1, train_images=500, batch_size=256), "uneven")
    (note,) = [note for note in uneven.notes if "each epoch" in note]
    assert "trains on 256 of the 500 training images" in note and "a different 244 wait" in note
    assert "train.batch_size=250 would leave out 0" in note
    even = new_trainer(tmp_path, quick_config(epochs=1, train_images=500, batch_size=250), "even")
    assert not [note for note in even.notes if "each epoch" in note]


def test_a_warmup_longer_than_the_run_is_noted_with_the_learning_rate_it_ends_at(tmp_path):
    long = new_trainer(tmp_path, quick_config(epochs=2, train_images=500, warmup_epochs=4), "long")
    (note,) = [note for note in long.notes if "warmup" in note]
    assert "longer than the run's 2 epochs" in note and "ends at 50% of train.lr=0.005" in note
    last_step = 2 * long.steps_per_epoch - 1
    assert long.learning_rate(last_step, elapsed=0.0) == pytest.approx(0.5 * 0.005)
    fitting = new_trainer(tmp_path, quick_config(epochs=2, train_images=500, warmup_epochs=2), "fitting")
    assert not [note for note in fitting.notes if "warmup" in note]


def test_micro_batches_add_up_to_the_whole_batchs_step(tmp_path):
    # fp32 without augmentation or dropout: only the order of floating-point sums differs.
    def trainer(name, micro_batches):
        overrides = ["data.train_subset=100", "data.test_subset=50", "data.augment=false", "train.batch_size=10"]
        overrides += ["train.precision=fp32", f"train.accumulation_steps={micro_batches}"]
        return new_trainer(tmp_path, resolve_run_config(preset="mnist-tiny", seed=1, overrides=overrides), name)

    whole, parts = trainer("whole", 1), trainer("parts", 3)  # micro-batches of 4, 3 and 3 images
    head = 0.1 * torch.randn_like(whole.model.head.weight)
    for model in (whole.model, parts.model):  # the head starts at zero, which stops every gradient below it
        with torch.no_grad():
            model.head.weight.copy_(head)
    batch = torch.arange(10)
    (loss, correct), (parts_loss, parts_correct) = (
        t.train_batch(batch, torch.Generator().manual_seed(0)) for t in (whole, parts)
    )
    assert int(correct) == int(parts_correct) and float(parts_loss) == pytest.approx(float(loss), rel=1e-5)
    # The gradients the step took (Adam's first step moves each weight by about lr x the sign of its
    # gradient, so weights would differ wherever a gradient is ~0 and rounding flips its sign).
    expected = dict(whole.model.named_parameters())
    for name, parameter in parts.model.named_parameters():
        assert parameter.grad.abs().sum() > 0, name
        scale = expected[name].grad.abs().max().item()
        torch.testing.assert_close(parameter.grad, expected[name].grad, rtol=1e-4, atol=1e-4 * scale)
    with pytest.raises(ConfigError, match="accumulation_steps must be from 1 to train.batch_size=10"):
        resolve_run_config(overrides=["train.batch_size=10", "train.accumulation_steps=11"])


def test_training_steps_leave_their_loss_on_the_device(tmp_path, monkeypatch):
    # On a GPU, reading a tensor's value (.item(), float(), int()) waits for the device to finish, so the
    # host cannot queue the next step meanwhile: a step must read nothing; the epoch reads its sums once.
    trainer = new_trainer(tmp_path, quick_config(epochs=1, train_images=640))  # 20 steps
    reads = []
    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda self, *a, _read=original, **k: reads.append(1) or _read(self, *a, **k)
        )
    trainer.run()
    monkeypatch.undo()
    assert trainer.steps_per_epoch == 20 and len(reads) < 10, len(reads)  # the end of the epoch and its evaluation


def test_progress_is_reported_at_most_five_times_a_second_and_at_each_epochs_end(tmp_path):
    trainer = new_trainer(tmp_path, quick_config(epochs=2, train_images=640))  # 20 steps an epoch
    reports: list[tuple[int, float, float]] = []
    trainer.run(on_progress=lambda epoch, fraction, stats: reports.append((epoch, fraction, time.perf_counter())))
    for epoch in (0, 1):
        times = [at for e, _, at in reports if e == epoch]
        assert all(later - earlier >= 0.2 for earlier, later in zip(times, times[1:-1]))  # the last may come sooner
        assert [fraction for e, fraction, _ in reports if e == epoch][-1] == pytest.approx((epoch + 1) / 2)
