"""The training loop: data on the device, AdamW, warm-up + cosine, bf16 autocast, checkpoints, resume.

A run directory holds `config.yaml` (the resolved config), `metrics.jsonl` (one line per
epoch) and `checkpoints/` (`last` and `best` for inference, `resume` for continuing). Every
epoch reseeds from (seed, epoch), so a resumed run continues exactly as if never stopped.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.atomic import atomic_write_text
from vitlab.config import RunConfig, load_run_config, save_yaml
from vitlab.data.augment import augment_batch
from vitlab.data.datasets import open_dataset
from vitlab.data.sources import ImageDataset
from vitlab.data.tensors import batch_indices, num_batches, to_device, to_model_input
from vitlab.engine.checkpoint import RESUME_FORMAT, load_state_strict, load_tensors, save_checkpoint, save_tensors
from vitlab.engine.distributed import (
    barrier,
    check_global_batch,
    gather_rows,
    init_process_group,
    local_rank_zero_first,
    shard,
    shard_range,
    sum_across,
    world_from_environment,
)
from vitlab.engine.evaluate import EvalResult, predict_logits, scores_from_logits
from vitlab.engine.finetune import adapt_state, freeze_until, layer_scale, load_pretrained, read_source
from vitlab.engine.runtime import (
    autocast,
    autocast_dtype,
    compiled,
    configure_cpu,
    precision_name,
    resolve_device,
)
from vitlab.engine.schedule import warmup_cosine
from vitlab.errors import CheckpointError, ConfigError, VitlabError
from vitlab.interrupts import raise_swallowed_interrupt
from vitlab.models.registry import build_model
from vitlab.terminal import counted

# A note says how many training images each epoch leaves out once that is more than this fraction.
LEFT_OUT_NOTE_FRACTION = 0.1
# The progress callback hears of the running loss at most this often: each report reads the loss and
# accuracy off the device, which on a GPU waits for the step to finish instead of queueing the next.
PROGRESS_SECONDS = 0.2
# With a time budget the warm-up ends by this share of the budget at the latest, so that a budget shorter
# than train.warmup_epochs still reaches train.lr and decays (warm-ups of 5-10% of a run are the usual).
WARMUP_MAX_BUDGET_SHARE = 0.1


@dataclass
class EpochStats:
    """What one epoch of training measured."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    lr: float
    seconds: float
    images_per_second: float
    elapsed: float = 0.0  # seconds since the run started (across resumes) when this epoch ended
    ema_test_accuracy: float | None = None  # the EMA weights' test accuracy, when train.ema_decay is set


@dataclass
class TrainResult:
    """Summary of a finished run."""

    run_dir: Path
    history: list[EpochStats] = field(default_factory=list)
    best_accuracy: float = 0.0
    final: EvalResult | None = None
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        """Epochs trained: the last scored epoch is the last one (train.eval_every may skip the others)."""
        return self.history[-1].epoch if self.history else 0


# A progress callback receives (epoch, fraction of the run done, running stats of the epoch).
ProgressCallback = Callable[[int, float, dict[str, float]], None]
EpochCallback = Callable[[EpochStats], None]
# An evaluation callback receives (what is scored: "testing" or "testing EMA", fraction of the test set done).
EvaluationCallback = Callable[[str, float], None]


def build_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """AdamW (or Adam) over trainable parameters: no weight decay on biases, norms, tokens and position
    tables, and a per-group learning-rate scale for layer-wise decay."""
    skip = model.no_weight_decay()
    depth = config.model.depth
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = param.ndim > 1 and name not in skip
        groups.setdefault((decays, layer_scale(name, depth, config.train.layer_decay)), []).append(param)
    param_groups = [
        {"params": params, "weight_decay": config.train.weight_decay if decays else 0.0, "lr_scale": scale}
        for (decays, scale), params in sorted(groups.items(), key=lambda item: (not item[0][0], -item[0][1]))
    ]
    cls = torch.optim.AdamW if config.train.optimizer == "adamw" else torch.optim.Adam
    # One fused kernel per parameter, on CPU as on CUDA: the step is 3-4x faster than the foreach
    # implementation, which on CPU loops over the tensors op by op (benchmarks/cpu_choices.py).
    return cls(param_groups, lr=config.train.lr, betas=(config.train.beta1, config.train.beta2), fused=True)


class Trainer:
    """Owns one run: its data, model, optimiser, and the run directory it writes."""

    def __init__(self, config: RunConfig, run_dir: Path, resuming: bool = False) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.world = world_from_environment()
        self.device = resolve_device(config.train.device)
        if self.device.type == "cuda" and self.world.distributed:
            self.device = torch.device("cuda", self.world.local_rank)
        init_process_group(self.world, self.device.type)
        check_global_batch(config.train.batch_size, self.world, config.train.accumulation_steps)
        self.dtype = autocast_dtype(config.train.precision, self.device)
        self.threads = configure_cpu(config.train.threads, share_with=self.world.size)
        with local_rank_zero_first(self.world):
            data = open_dataset(config.data, config.model.in_channels, config.model.img_size, config.train.seed)
        self.mean, self.std = data.mean, data.std
        self.train_set: ImageDataset = data.train
        self.test_set: ImageDataset = data.test
        self.notes = list(data.notes)
        self.folder_state = data.folder_state
        began_with = self.recorded_folder_state() if resuming else None
        if began_with and data.folder_state and data.folder_state != began_with:
            self.notes.append(
                f"{config.data.dataset} has changed since this run began; its train/test split changed with it, so "
                "test scores from before and after this resume do not compare (and may count images trained on)"
            )
        if config.model.num_classes != len(data.class_names):
            raise ConfigError(
                f"model.num_classes={config.model.num_classes} but {data.name} has {len(data.class_names)} classes"
            )
        if len(self.test_set) == 0:
            raise ConfigError(f"{data.name} has no test images; add a test/ folder or raise data.test_fraction")
        self.class_names = data.class_names
        torch.manual_seed(config.train.seed)
        self.model = build_model(config.model).to(self.device)
        if config.train.init_from and not resuming:  # a resume restores its own weights
            self.start_from_pretrained(config.train.init_from)
        freeze_until(self.model, config.train.freeze_until)
        self.optimizer = build_optimizer(self.model, config)
        self.ema_model = make_ema(self.model) if config.train.ema_decay else None
        self.optimizer_steps = 0
        self.steps_per_epoch = num_batches(len(self.train_set), config.train.batch_size, drop_last=True)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"train.batch_size={config.train.batch_size} is larger than the {len(self.train_set)} training images; "
                f"pass train.batch_size=N with N at most {len(self.train_set)}"
            )
        self.note_left_out_images()
        train = config.train
        if not train.time_budget and train.warmup_epochs > train.epochs:  # it would run silently at a fraction of lr
            self.notes.append(
                f"train.warmup_epochs={train.warmup_epochs:g} is longer than the run's {counted(train.epochs, 'epoch')}: the "
                f"learning rate climbs the whole run and ends at {train.epochs / train.warmup_epochs:.0%} of "
                f"train.lr={train.lr:g}, with no decay"
            )
        self.start_epoch = 0
        self.best_accuracy = -1.0
        self.elapsed_before = 0.0  # run time spent before a resume, for time budgets
        self.warmup_done_at: float | None = None
        self.budget_spent = False  # a budgeted run's last epoch is behind it
        # Kept on the device once, so each batch is an index into memory, not a Python loop.
        # Under torchrun, gradients are averaged across processes by DDP; weights stay identical.
        self.ddp = nn.parallel.DistributedDataParallel(self.model) if self.world.distributed else None
        self.train_module: nn.Module = self.ddp if self.ddp is not None else self.model
        if config.train.compile:
            self.train_module = compiled(self.train_module, self.device)
        self.train_images = self.train_set.images.to(self.device)
        self.train_labels = self.train_set.labels.to(self.device)

    def recorded_folder_state(self) -> str | None:
        """The image folder's state when the run began (run.json), None when not recorded."""
        try:
            return json.loads((self.run_dir / "run.json").read_text()).get("folder_state")
        except (OSError, ValueError, AttributeError):
            return None

    def note_left_out_images(self) -> None:
        """Batches are whole, so each epoch leaves the remainder out (a different one each time): say so when
        that is a fair share of a small data set, with a batch size that would use nearly every image."""
        images, batch = len(self.train_set), self.config.train.batch_size
        left_out = images % batch
        if left_out <= LEFT_OUT_NOTE_FRACTION * images:
            return
        note = (
            f"each epoch trains on {images - left_out} of the {images} training images (whole batches of {batch}; "
            f"a different {left_out} wait each epoch)"
        )
        even = images // num_batches(images, batch)
        even -= even % self.world.size  # a global batch splits evenly over the processes
        if 0 < even < batch:
            note += f"; train.batch_size={even} would leave out {images % even}"
        self.notes.append(note)

    def start_from_pretrained(self, source: str) -> None:
        """Initialise from another model's weights, adapted to this model's grid and classes."""
        pretrained = read_source(source)
        keep_head = pretrained.config.num_classes == self.config.model.num_classes and (
            pretrained.class_names is None or list(pretrained.class_names) == list(self.class_names)
        )
        adapted = adapt_state(pretrained.state, pretrained.config, self.config.model, keep_head)
        load_pretrained(self.model, adapted, source)

    # ----- run directory --------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def checkpoint_info(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        """What inference needs besides the weights, plus where the checkpoint came from."""
        return {
            "dataset": self.config.data.dataset,
            "data_dir": self.config.data.data_dir,
            # How an image folder without train/ and test/ was split: `vitlab eval` holds out the same images.
            "test_split": {"fraction": self.config.data.test_fraction, "seed": self.config.train.seed},
            "class_names": list(self.class_names),
            "mean": list(self.mean),
            "std": list(self.std),
            "precision": precision_name(self.dtype),  # how the epoch scores were computed: `vitlab eval` follows
            "folder_state": self.folder_state,  # eval says when the folder, and so its split, has changed since
            "preset": self.config.preset,
            "epoch": epoch,
            "metrics": metrics,
        }

    def save_resume_state(self, epoch: int, elapsed: float) -> None:
        """Weights, optimiser state and position in one file, so a resume never mixes epochs."""
        tensors = {f"model.{name}": value for name, value in self.model.state_dict().items()}
        if self.ema_model is not None:
            tensors |= {f"ema.{name}": value for name, value in self.ema_model.state_dict().items()}
        optimizer_state = self.optimizer.state_dict()
        for index, state in optimizer_state["state"].items():
            for key, value in state.items():
                tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value)
        groups = [{k: v for k, v in group.items()} for group in optimizer_state["param_groups"]]
        metadata = {
            "epoch": epoch,
            "best_accuracy": self.best_accuracy,
            "elapsed": elapsed,
            "warmup_done_at": self.warmup_done_at,  # where a budget's decay began, for a resume to go on with it
            "budget_spent": self.budget_spent,  # the run is over: a resume measures it, and trains no further step
            "optimizer_steps": self.optimizer_steps,
            "param_groups": groups,
        }
        save_tensors(self.checkpoint_dir / "resume.safetensors", tensors, metadata, RESUME_FORMAT)

    def load_resume_state(self) -> None:
        """Continue from the last completed epoch recorded in checkpoints/resume.safetensors."""
        path = self.checkpoint_dir / "resume.safetensors"
        if not path.exists():
            raise CheckpointError(f"{self.run_dir} has no checkpoints/resume.safetensors to resume from")
        try:
            tensors, metadata = load_tensors(path, expected_format=RESUME_FORMAT)
        except CheckpointError as exc:
            if (self.checkpoint_dir / "last.safetensors").exists():  # what the run has not lost
                raise CheckpointError(
                    f"{exc}; the run cannot resume, but checkpoints/last.safetensors still serves eval, "
                    "predict and finetune"
                ) from None
            raise
        model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        load_state_strict(self.model, model_state, path)
        if self.ema_model is not None:
            ema_state = {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")}
            load_state_strict(self.ema_model, ema_state or model_state, path)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value.to(self.device) if name != "step" else value
        groups = metadata["param_groups"]
        for group in groups:
            group["betas"] = tuple(group["betas"])
        try:
            self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: optimiser state does not match this model ({exc})") from None
        self.start_epoch = int(metadata["epoch"])
        self.best_accuracy = float(metadata["best_accuracy"])
        self.elapsed_before = float(metadata.get("elapsed", 0.0))
        warmup_done_at = metadata.get("warmup_done_at")
        self.warmup_done_at = None if warmup_done_at is None else float(warmup_done_at)
        # Resume states written before the flag: a budget spent by the last save is the run's end.
        budget = self.config.train.time_budget
        self.budget_spent = bool(metadata.get("budget_spent", budget and self.elapsed_before >= budget))
        self.optimizer_steps = int(metadata.get("optimizer_steps", 0))

    # ----- the loop ---------------------------------------------------------------------------
    def train_batch(self, indices: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step; returns (summed loss, correct predictions) over the batch, as tensors on the
        device: reading them would make the host wait for the device at every step.

        With train.accumulation_steps=N the batch goes through in N micro-batches, each loss weighted
        by its share of the batch, so their gradients add up to the whole batch's."""
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, correct = 0, 0
        parts = indices.tensor_split(cfg.train.accumulation_steps)
        for number, part in enumerate(parts, start=1):
            # DDP averages gradients across processes once, after the last micro-batch, not after each.
            syncing = self.ddp is None or number == len(parts)
            with contextlib.nullcontext() if syncing else self.ddp.no_sync():
                part_loss, part_correct = self.forward_backward(part, generator, share=len(part) / len(indices))
            loss_sum, correct = loss_sum + part_loss, correct + part_correct
        if cfg.train.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        self.optimizer.step()
        self.optimizer_steps += 1
        if self.ema_model is not None:
            update_ema(self.ema_model, self.model, cfg.train.ema_decay, self.optimizer_steps)
        return loss_sum, correct

    def forward_backward(
        self, indices: torch.Tensor, generator: torch.Generator, share: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of the loss on these images, weighted by `share`, added to the parameters' .grad;
        returns (summed loss, correct predictions) over them, on the device (see train_batch)."""
        cfg = self.config
        images = self.train_images[indices].float().div_(255.0)
        labels = self.train_labels[indices]
        images, targets = augment_batch(
            images, labels, cfg.model.num_classes, cfg.data, cfg.train.label_smoothing, generator
        )
        soft = targets.dtype.is_floating_point  # mixup / cutmix targets already carry the smoothing
        inputs = to_model_input(images, self.mean, self.std, cfg.model.img_size, cfg.model.in_channels)
        with autocast(self.device, self.dtype):
            logits = self.train_module(inputs)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=0.0 if soft else cfg.train.label_smoothing)
        (loss * share).backward()
        return loss.detach().double() * len(labels), (logits.argmax(dim=1) == labels).sum()

    def learning_rate(self, step: int, elapsed: float) -> float:
        """Warm-up over steps, then cosine decay over steps or, with a time budget, over elapsed time.

        With a budget the warm-up goes by steps or by WARMUP_MAX_BUDGET_SHARE of the budget, whichever is
        further along, and the decay takes the rest of the budget from where the warm-up ended."""
        train = self.config.train
        warmup_steps = int(round(train.warmup_epochs * self.steps_per_epoch))
        if not train.time_budget:
            return warmup_cosine(step, train.epochs * self.steps_per_epoch, warmup_steps, train.lr, train.min_lr)
        if self.warmup_done_at is None:
            warmed = max((step + 1) / max(warmup_steps, 1), elapsed / (WARMUP_MAX_BUDGET_SHARE * train.time_budget))
            if warmup_steps and warmed < 1.0:
                return train.lr * warmed
            self.warmup_done_at = elapsed
        span = max(train.time_budget - self.warmup_done_at, 1e-9)
        progress = min((elapsed - self.warmup_done_at) / span, 1.0)
        return warmup_cosine(int(progress * 1_000_000), 1_000_000, 0, train.lr, train.min_lr)

    def fraction_done(self, step: int, elapsed: float) -> float:
        """How much of the run is done: by steps, or by time with a budget."""
        train = self.config.train
        if train.time_budget:
            return min(elapsed / train.time_budget, 1.0)
        return step / (train.epochs * self.steps_per_epoch)

    def run(
        self,
        on_progress: ProgressCallback | None = None,
        on_epoch: EpochCallback | None = None,
        on_evaluation: EvaluationCallback | None = None,
    ) -> TrainResult:
        """Train from start_epoch until the last epoch (or the time budget) ends, evaluating after each epoch
        (`on_evaluation` follows each pass over the test set: on a large one it takes a while)."""
        cfg = self.config

        def scored(model: nn.Module, label: str) -> EvalResult:
            return self.evaluate(model, partial(on_evaluation, label) if on_evaluation else None)

        budget = cfg.train.time_budget
        result = TrainResult(run_dir=self.run_dir, history=read_metrics(self.run_dir))
        self.write_run_info()
        started = time.perf_counter() - self.elapsed_before
        scores = None
        self.model.train()
        epoch = self.start_epoch
        # A budgeted run stops after the epoch the budget ends in (one resumed after it trains nothing).
        while not self.budget_spent if budget else epoch < cfg.train.epochs:
            # Reseed per epoch: the shuffle, augmentation and dropout of epoch e depend only on (seed, e).
            torch.manual_seed(cfg.train.seed * 100_003 + epoch)
            generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
            epoch_start = time.perf_counter()
            loss_sum, correct, seen = 0, 0, 0  # the first two become tensors on the device
            reported = 0.0
            lr = cfg.train.lr
            batches = batch_indices(
                len(self.train_set), cfg.train.batch_size, shuffle=True, generator=generator, drop_last=True
            )
            for step_in_epoch, indices in enumerate(batches):
                raise_swallowed_interrupt()
                step = epoch * self.steps_per_epoch + step_in_epoch
                elapsed = time.perf_counter() - started
                if budget:
                    # Every rank takes the ranks' mean clock, so all set the same learning rate (their
                    # weights stay identical) and stop at the same step.
                    over, clocks = sum_across([float(elapsed >= budget), elapsed], self.world)
                    elapsed = clocks / self.world.size
                    # The budget ends mid-epoch: stop with the schedule decayed. Never before an epoch's
                    # first step: the epoch before may have skipped its evaluation as not the last, and
                    # this one, scored, ends the run.
                    if step_in_epoch and over > 0:
                        break
                lr = self.learning_rate(step, elapsed)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                local = shard(indices, self.world)  # this process's part of the global batch
                batch_loss, batch_correct = self.train_batch(to_device(local, self.device), generator)
                loss_sum, correct, seen = loss_sum + batch_loss, correct + batch_correct, seen + len(local)
                now = time.perf_counter()
                epoch_ends = step_in_epoch == self.steps_per_epoch - 1  # the bar reaches it before evaluation
                if on_progress is not None and (now - reported >= PROGRESS_SECONDS or epoch_ends):
                    reported = now
                    on_progress(
                        epoch,
                        self.fraction_done(step + 1, now - started),
                        {
                            "loss": float(loss_sum) / seen,
                            "accuracy": int(correct) / seen,
                            # every rank trains an equal slice in lock-step: the run's rate is world size x this one's
                            "images_per_second": seen * self.world.size / max(now - epoch_start, 1e-9),
                        },
                    )
            loss_sum, correct, seen = sum_across([float(loss_sum), int(correct), seen], self.world)
            train_seconds = time.perf_counter() - epoch_start
            last = self.is_last_epoch(epoch, started)
            if (epoch + 1) % cfg.train.eval_every and not last:
                # Evaluation skipped this epoch (it can cost as much as training on small data sets);
                # the resume state still moves on, so an interruption loses at most one epoch.
                if self.world.is_main:
                    self.save_resume_state(epoch + 1, time.perf_counter() - started)
                epoch += 1
                continue
            scores = scored(self.model, "testing")
            ema_scores = scored(self.ema_model, "testing EMA") if self.ema_model is not None else None
            stats = EpochStats(
                epoch=epoch + 1,
                train_loss=loss_sum / seen,
                train_accuracy=correct / seen,
                test_loss=scores.loss,
                test_accuracy=scores.accuracy,
                lr=lr,
                seconds=time.perf_counter() - epoch_start,
                images_per_second=seen / train_seconds,
                elapsed=time.perf_counter() - started,
                ema_test_accuracy=ema_scores.accuracy if ema_scores else None,
            )
            self.budget_spent = bool(budget and last)
            self.finish_epoch(stats, result.history)
            result.history.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
            epoch += 1
            if last:
                break
        result.final = scores or scored(self.model, "testing")
        result.best_accuracy = max(self.best_accuracy, 0.0)
        # A finished run resumed trained nothing: its time is the run's, not that of scoring it again.
        result.seconds = time.perf_counter() - started if epoch > self.start_epoch else self.elapsed_before
        return result

    def is_last_epoch(self, epoch: int, started: float) -> bool:
        """Whether the epoch just trained ends the run: the last epoch, or the time budget spent (on any rank)."""
        budget = self.config.train.time_budget
        if not budget:
            return epoch + 1 >= self.config.train.epochs
        return sum_across([float(time.perf_counter() - started >= budget)], self.world)[0] > 0

    def write_run_info(self) -> None:
        """Facts about where and how the run trains, beside its config (for reports and comparisons)."""
        if not self.world.is_main:
            return
        info = {
            "train_images": len(self.train_set),
            "test_images": len(self.test_set),
            "steps_per_epoch": self.steps_per_epoch,
            "device": str(self.device),
            "precision": precision_name(self.dtype),
            "folder_state": self.folder_state,
            "threads": self.threads,
            "processes": self.world.size,
            "torch": torch.__version__,
        }
        atomic_write_text(self.run_dir / "run.json", json.dumps(info, indent=2) + "\n")

    def evaluate(
        self, model: nn.Module | None = None, on_progress: Callable[[float], None] | None = None
    ) -> EvalResult:
        """Score the current weights (or another model's, e.g. the EMA) on the test split; `on_progress`
        is told the fraction done after each batch.

        With several processes each scores its own part of the test set and the logits are
        gathered, so every rank reports the same full-set scores in a fraction of the time.
        """
        count = len(self.test_set)
        rows = shard_range(count, self.world)
        done = 0

        def on_batch(images: int) -> None:
            nonlocal done
            done += images
            on_progress(done / max(rows.stop - rows.start, 1))  # this rank's part: the ranks go in step

        logits = predict_logits(
            model or self.model,
            self.test_set.images[rows],
            mean=self.mean,
            std=self.std,
            batch_size=self.config.train.eval_batch_size,
            device=self.device,
            dtype=self.dtype,
            on_batch=on_batch if on_progress is not None else None,
        )
        logits = gather_rows(logits.to(self.device), count, self.world).cpu()
        return scores_from_logits(logits, self.test_set.labels)

    def finish_epoch(self, stats: EpochStats, earlier: list[EpochStats]) -> None:
        """Record metrics (after the `earlier` epochs metrics.jsonl holds), then write last (and best)
        checkpoints, then the resume state (main process only)."""
        if not self.world.is_main:
            self.best_accuracy = max(self.best_accuracy, stats.test_accuracy, stats.ema_test_accuracy or 0.0)
            return
        write_metrics(self.run_dir, [*earlier, stats])
        metrics = {"test_accuracy": stats.test_accuracy, "test_loss": stats.test_loss}
        info = self.checkpoint_info(stats.epoch, metrics)
        save_checkpoint(self.checkpoint_dir / "last.safetensors", self.model, info)
        candidates = [(stats.test_accuracy, self.model, "raw")]
        if self.ema_model is not None:
            ema_info = self.checkpoint_info(stats.epoch, {"test_accuracy": stats.ema_test_accuracy}) | {
                "weights": "ema"
            }
            save_checkpoint(self.checkpoint_dir / "ema.safetensors", self.ema_model, ema_info)
            candidates.append((stats.ema_test_accuracy, self.ema_model, "ema"))
        accuracy, model, kind = max(candidates, key=lambda c: c[0])
        if accuracy > self.best_accuracy:
            self.best_accuracy = accuracy
            best_info = self.checkpoint_info(stats.epoch, {"test_accuracy": accuracy}) | {"weights": kind}
            save_checkpoint(self.checkpoint_dir / "best.safetensors", model, best_info)
        self.save_resume_state(stats.epoch, stats.elapsed)


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of the model whose weights will track an exponential moving average."""
    ema = copy.deepcopy(model).eval()
    for param in ema.parameters():
        param.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """ema = d * ema + (1 - d) * weights, with d ramped up over the first steps (so early weights fade)."""
    effective = min(decay, (1 + step) / (10 + step))
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - effective)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def read_metrics(run_dir: Path) -> list[EpochStats]:
    """The epochs recorded in run_dir/metrics.jsonl (empty for a new run).

    vitlab replaces the file whole (write_metrics), but one that older versions appended to can end
    in half a line (a full disk, a kill): that epoch counts as not finished, as its checkpoints may
    not be either. A bad line before the last is an error.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    stats = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            stats.append(EpochStats(**json.loads(line)))
        except (ValueError, TypeError):
            if number == len(lines) and not text.endswith("\n"):
                break
            raise ConfigError(f"{path} line {number} is not a line of epoch metrics written by vitlab") from None
    return stats


def write_metrics(run_dir: Path, stats: list[EpochStats]) -> None:
    """Replace run_dir/metrics.jsonl with one JSON line per epoch, atomically: never a torn line."""
    lines = "".join(json.dumps(s.__dict__) + "\n" for s in stats)
    atomic_write_text(Path(run_dir) / "metrics.jsonl", lines)


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse a folder that already holds a run: a new run must never overwrite one."""
    if (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists():
        raise ConfigError(
            f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, or pick another --out"
        )


def prepare_run_dir(config: RunConfig, run_dir: Path) -> None:
    """Create a fresh run directory and save the resolved config in it."""
    check_new_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(config, run_dir / "config.yaml")


def start_new_run(config: RunConfig, run_dir: Path) -> Trainer:
    """Create run_dir with the config saved in it, then its Trainer.

    A run the Trainer refuses (a data set it cannot open, a batch larger than the data) leaves no run
    directory behind: only the config was written, and nothing can resume from a run that never started.
    """
    world = world_from_environment()
    created = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]  # deepest first
    if world.is_main:  # one process creates the run directory; the others wait for it
        prepare_run_dir(config, run_dir)
    barrier(world)
    try:
        return Trainer(config, run_dir)
    except VitlabError:
        if world.is_main:
            (run_dir / "config.yaml").unlink(missing_ok=True)
            for folder in created:
                if any(folder.iterdir()):
                    break
                folder.rmdir()
        raise


def saved_config_path(run_dir: Path) -> Path:
    """The config.yaml of an existing run (a clear error when the folder holds none)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ConfigError(f"run directory not found: {run_dir}")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml){enclosing_run_hint(run_dir)}")
    return config_path


def enclosing_run_hint(path: Path) -> str:
    """'; the run is R' when `path` lies inside run R (its checkpoints/ folder, or a file in it), else ''."""
    for folder in list(Path(path).parents)[:2]:
        if (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir():
            return f"; the run is {folder}"
    return ""


def trainer_for_resume(run_dir: Path, epochs: int | None = None) -> Trainer:
    """A Trainer that continues the run in run_dir from its last completed epoch (or from the start)."""
    config_path = saved_config_path(run_dir)
    config = load_run_config(config_path).validate()
    if epochs is not None and config.train.time_budget:  # it would be saved and never read
        raise ConfigError(
            f"{run_dir} trains on a time budget of {config.train.time_budget:g}s, which --epochs does not change"
        )
    if epochs is not None:
        config.train.epochs = epochs
    # A run stopped before its first epoch ended saved its config and nothing else: it starts again as it began.
    started = (run_dir / "checkpoints").exists() or bool(read_metrics(run_dir))
    trainer = Trainer(config, run_dir, resuming=started)
    if started:
        trainer.load_resume_state()
    if not config.train.time_budget and config.train.epochs < trainer.start_epoch:
        raise ConfigError(
            f"{run_dir} has trained {trainer.start_epoch} epochs already; to train on, give --epochs more than that"
        )
    if epochs is not None and trainer.world.is_main:
        save_yaml(config, config_path)
    # Lines written after the resume point belong to an epoch that will be trained again.
    kept = [s for s in read_metrics(run_dir) if s.epoch <= trainer.start_epoch]
    if trainer.world.is_main:
        write_metrics(run_dir, kept)
    return trainer
