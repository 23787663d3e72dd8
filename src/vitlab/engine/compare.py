"""Train several models under the same budget, data pipeline and schedule, and measure each the same way."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vitlab.config import RunConfig, load_run_config
from vitlab.data.tensors import to_model_input
from vitlab.engine.runtime import autocast, evaluation_mode
from vitlab.engine.train import Trainer, TrainResult, start_new_run, trainer_for_resume
from vitlab.errors import ConfigError
from vitlab.models.flops import forward_flops


@dataclass
class ContenderResult:
    """What `compare` reports for one model."""

    name: str
    run_dir: Path
    test_accuracy: float
    parameters: int
    forward_flops: int
    train_images_per_second: float
    latency_ms: float
    seconds: float
    curve: list[tuple[float, float]] = field(default_factory=list)  # (elapsed seconds, test accuracy)


def inference_latency_ms(trainer: Trainer, repeats: int = 50) -> float:
    """Median wall time of classifying one test image, in milliseconds."""
    model, config = trainer.model, trainer.config.model
    image = trainer.test_set.images[:1].to(trainer.device)
    batch = to_model_input(image, trainer.mean, trainer.std, config.img_size, config.in_channels)
    times = []
    with evaluation_mode(model), autocast(trainer.device, trainer.dtype):
        for index in range(repeats + 5):
            start = time.perf_counter()
            model(batch)
            if index >= 5:  # the first calls warm caches and allocators
                times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def continues_run(run_dir: Path, config: RunConfig, name: str) -> bool:
    """Whether run_dir already holds this contender's run, begun with exactly this config (a compare that
    was stopped and is started again); a run there with other settings is an error, never overwritten."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return False
    if load_run_config(saved).to_dict() != config.to_dict():
        raise ConfigError(f"{run_dir.parent} holds a run of {name} with other settings; pick another --out")
    return True


def run_contender(
    name: str,
    config: RunConfig,
    run_dir: Path,
    train: Callable[[Trainer], TrainResult] = Trainer.run,
    resume: bool = False,
) -> ContenderResult:
    """Train one contender in its own run directory and measure it. `train` runs the Trainer (the command
    line's adds its progress bar and epoch lines). With `resume` (see continues_run) the run already there
    continues from its last finished epoch; a finished one trains no further and is measured as it is."""
    trainer = trainer_for_resume(run_dir) if resume else start_new_run(config, run_dir)
    result = train(trainer)
    history = result.history
    speeds = [h.images_per_second for h in history]
    return ContenderResult(
        name=name,
        run_dir=run_dir,
        test_accuracy=result.final.accuracy,
        parameters=sum(p.numel() for p in trainer.model.parameters()),
        forward_flops=forward_flops(config.model),
        train_images_per_second=statistics.median(speeds) if speeds else 0.0,
        latency_ms=inference_latency_ms(trainer),
        seconds=result.seconds,
        curve=[(h.elapsed, h.test_accuracy) for h in history],
    )
