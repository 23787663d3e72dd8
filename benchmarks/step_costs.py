"""Step costs: a training step's time split into a cost per step and a cost per image, vitlab against Hugging Face.

Issue #4 asks vitlab to train the default MNIST model 1.5x as fast as Hugging Face's ViT. A step's
time is close to a straight line in the batch size: a fixed part (Python, the dispatcher, autograd,
the optimizer, every kernel's set-up) and a part per image (the arithmetic and memory traffic of the
images themselves). This fits that line for each contender, so the ratio can be read part by part:
the per-image ratio is what the speed ratio tends to at large batches, and no batch size gives more
than the larger of the two parts' ratios. Contenders as in speed.py (vitlab eager, vitlab through
torch.compile with one static graph per batch size, Hugging Face with eager attention, its faster
setting on CPU), the same training step (speed.train_step_fn: AdamW fused, autocast as vitlab picks,
a ready batch). In each round every batch size in turn, its contenders' steps next to each other
(speed.alternating_steps); the speed ratios pair each contender's steps with the peer's of the same
round, for each batch size and for each part of the lines fitted round by round (this machine's speed
drifts between rounds), medians and quartiles over the rounds.

    python benchmarks/step_costs.py [--configs mnist,w192] [--quick]
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

import speed
from common import median_and_quartiles, ratio_with_quartiles, record, report_head

BATCHES = {"mnist": (16, 32, 64, 128, 256, 512), "w192": (8, 16, 32, 64, 128)}
# Rounds (every batch size and contender in turn in each) and steps per turn.
REPEATS = {"mnist": (15, 3), "w192": (7, 1)}
CONTENDERS = ("vitlab", "vitlab-compiled", "hf-eager")
PEER = "hf-eager"
TARGET = 1.5  # issue #4's training-speed target on the MNIST model


def fit_line(batches: list[int], seconds: list[float]) -> tuple[float, float, float]:
    """Least-squares seconds = fixed + per_image x batch: (fixed, per_image, the worst point's distance
    from the line as a fraction of its time)."""
    mean_b, mean_s = statistics.fmean(batches), statistics.fmean(seconds)
    per_image = sum((b - mean_b) * (s - mean_s) for b, s in zip(batches, seconds)) / sum(
        (b - mean_b) ** 2 for b in batches
    )
    fixed = mean_s - per_image * mean_b
    worst = max(abs(fixed + per_image * b - s) / s for b, s in zip(batches, seconds))
    return fixed, per_image, worst


def step_fns(name: str, batches: tuple[int, ...]) -> dict[tuple[str, int], Callable[[], None]]:
    """A training step per (contender, batch size), ordered by batch size so that the contenders' steps of
    one size are taken next to each other; each eager contender's model is shared across batch sizes,
    the compiled contender gets one static graph per batch size (a graph with a symbolic batch would
    measure another kernel set)."""
    config, _ = speed.CONFIGS[name]
    torch._dynamo.reset()
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * len(batches))
    eager = {c: speed.CONTENDERS[c](config) for c in CONTENDERS if c != "vitlab-compiled"}
    fns = {}
    for batch in batches:
        for contender in CONTENDERS:
            model = eager[contender] if contender in eager else speed.vitlab_compiled(config, dynamic=False)
            fns[contender, batch] = speed.train_step_fn(model, config, batch, False, speed.DTYPE)
    return fns


def bench_config(name: str, rounds: int, steps: int) -> dict:
    """Step times per batch size and contender (medians over the rounds) with their fitted lines, and each
    contender's speed against PEER: per batch size, and per part of the line fitted in each round, paired
    round by round (this machine's speed drifts between rounds; one round's steps are taken close together)."""
    batches = BATCHES[name]
    fns = step_fns(name, batches)
    for fn in fns.values():  # warm-up, and compilation
        speed.timed(fn, 2)
    per_round = speed.alternating_turn_medians(fns, rounds, calls_per_turn=steps)
    result: dict = {"config": name, "batches": list(batches), "contenders": {}, "vs_peer": {}}
    round_lines = {}
    for contender in CONTENDERS:
        seconds = [statistics.median(per_round[contender, b]) for b in batches]
        fixed, per_image, worst = fit_line(list(batches), seconds)
        result["contenders"][contender] = {
            "step_ms": [1000 * s for s in seconds],
            "fixed_ms": 1000 * fixed,
            "per_image_us": 1e6 * per_image,
            "fit_worst": worst,
        }
        round_lines[contender] = [
            fit_line(list(batches), [per_round[contender, b][r] for b in batches]) for r in range(rounds)
        ]
    for contender in CONTENDERS:
        if contender == PEER:
            continue
        result["vs_peer"][contender] = {
            "batches": [
                median_and_quartiles([p / o for p, o in zip(per_round[PEER, b], per_round[contender, b])])
                for b in batches
            ],
            "fixed": median_and_quartiles([p[0] / o[0] for p, o in zip(round_lines[PEER], round_lines[contender])]),
            "per_image": median_and_quartiles([p[1] / o[1] for p, o in zip(round_lines[PEER], round_lines[contender])]),
        }
    return result


def needed_for_target(result: dict, batch: int) -> str:
    """What vitlab's eager step would need for TARGET x the peer's speed at `batch`, part by part."""
    ours = result["contenders"]["vitlab"]
    index = result["batches"].index(batch)
    allowed_ms = ours["step_ms"][index] * result["vs_peer"]["vitlab"]["batches"][index][0] / TARGET
    keeping_fixed_us = (allowed_ms - ours["fixed_ms"]) * 1000 / batch
    no_fixed_us = allowed_ms * 1000 / batch

    def cut(needed_us: float) -> str:
        if needed_us <= 0:
            return "below zero (out of reach)"
        if needed_us >= ours["per_image_us"]:
            return f"{needed_us:.1f} us (met as it is)"
        return f"{needed_us:.1f} us ({1 - needed_us / ours['per_image_us']:.0%} less)"

    return (
        f"At batch {batch}, {TARGET}x {PEER}'s speed (the paired ratio's median) allows a step of {allowed_ms:.1f} ms. "
        f"vitlab's per-image cost is {ours['per_image_us']:.1f} us; keeping its fixed {ours['fixed_ms']:.1f} ms, "
        f"it would have to be {cut(keeping_fixed_us)}; with no fixed cost at all, {cut(no_fixed_us)}."
    )


def write_report(results: list[dict], quick: bool) -> None:
    lines = [
        *report_head(
            "Step costs: a training step's fixed and per-image parts, vitlab against Hugging Face", "step_costs.py"
        ),
        f"- {speed.step_setup(speed_batch_sizes=False)}; in each round every batch size in turn, its contenders' steps next to each other; "
        "step times are medians over the rounds, each line fitted to them by least squares over the batch sizes. "
        "vitlab-compiled: one static torch.compile graph per batch size.",
        "",
    ]
    for result in results:
        name, batches = result["config"], result["batches"]
        lines += [
            f"## {name}",
            "",
            "| contender | "
            + " | ".join(f"batch {b} (ms)" for b in batches)
            + " | fixed per step (ms) | per image (us) "
            "| worst point off the line |",
            "| --- | " + " | ".join("---" for _ in batches) + " | --- | --- | --- |",
        ]
        for contender, figures in result["contenders"].items():
            steps = " | ".join(f"{ms:.2f}" for ms in figures["step_ms"])
            lines.append(
                f"| {contender} | {steps} | {figures['fixed_ms']:.2f} | {figures['per_image_us']:.1f} "
                f"| {figures['fit_worst']:.1%} |"
            )
        lines += [
            "",
            f"Speed against {PEER} (its step time over the contender's), paired round by round, median and quartiles: "
            "at each batch size, and for each part of the lines fitted in each round.",
            "",
            "| contender | " + " | ".join(f"batch {b}" for b in batches) + " | fixed part | per-image part |",
            "| --- | " + " | ".join("---" for _ in batches) + " | --- | --- |",
        ]
        for contender, versus in result["vs_peer"].items():
            measured = " | ".join(ratio_with_quartiles(r) for r in versus["batches"])
            fixed, per_image = ratio_with_quartiles(versus["fixed"]), ratio_with_quartiles(versus["per_image"])
            lines.append(f"| {contender} | {measured} | {fixed} | {per_image} |")
        lines += ["", needed_for_target(result, 256 if 256 in batches else batches[-1]), ""]
    record("step_costs.md", "\n".join(lines), smoke_run=quick)


def main() -> int:
    return speed.cpu_step_benchmark_main(__doc__.splitlines()[0], "mnist,w192", REPEATS, bench_config, write_report)


if __name__ == "__main__":
    raise SystemExit(main())
