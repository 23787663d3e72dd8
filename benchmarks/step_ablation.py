"""Step ablation: what a training step's GELU and softmax cost, measured by taking them out, vitlab against Hugging Face.

Issue #4 asks vitlab's eager training step to run 1.5x as fast as Hugging Face's on the default MNIST
model. step_breakdown.py splits a step by kind of work through torch.profiler, whose bookkeeping
lengthens memory-bound kernels unevenly. This measures without a profiler: vitlab's step as it is,
and with its MLPs' GELU, its attention's softmax (with the casts around it), or both replaced by the
identity, every matrix product and every other operation left as they were; Hugging Face's ViT with
eager attention (its faster setting on CPU) beside them. A variant computes another function, so only
its time means anything: how much faster a step gets without that work is what the work costs inside
a real step, and the step's speed against Hugging Face without it bounds what any faster GELU or
softmax could bring. Same training step as speed.py (autocast, fused AdamW, a ready batch), the
variants' steps taken in turn (speed.alternating_steps); ratios paired round by round, medians and
quartiles over the rounds.

    python benchmarks/step_ablation.py [--configs mnist,w192,s16] [--quick]
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable
from unittest import mock

import torch
import torch.nn.functional as F

import speed
from common import median_and_quartiles, ratio_with_quartiles, record, report_head
from vitlab.engine.runtime import autocast
from vitlab.models import vit

# Rounds (every variant in turn in each) and steps per turn.
REPEATS = {"mnist": (60, 3), "w192": (30, 1), "s16": (12, 1)}
PEER = "hf-eager"
# Variant: the kinds of work it replaces by the identity.
VARIANTS: dict[str, tuple[str, ...]] = {
    "vitlab": (),
    "vitlab without GELU": ("gelu",),
    "vitlab without softmax": ("softmax",),
    "vitlab without GELU and softmax": ("gelu", "softmax"),
}


class FunctionalWithoutGelu:
    """torch.nn.functional as vit.py calls it, with GELU replaced by the identity."""

    def __getattr__(self, name: str):
        return getattr(F, name)

    @staticmethod
    def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
        return x


def without(removed: tuple[str, ...]) -> contextlib.ExitStack:
    """A context in which vitlab's model skips the removed kinds of work; with nothing removed, an empty one,
    so that every variant's step pays the same few microseconds of context."""
    stack = contextlib.ExitStack()
    if "gelu" in removed:
        stack.enter_context(mock.patch.object(vit, "F", FunctionalWithoutGelu()))
    if "softmax" in removed:
        stack.enter_context(mock.patch.object(vit, "softmax_rows", lambda scores: scores))
    return stack


def ablated_step(step: Callable[[], None], removed: tuple[str, ...]) -> Callable[[], None]:
    def run() -> None:
        with without(removed):
            step()

    return run


def check_removal(model: torch.nn.Module, config, removed: tuple[str, ...]) -> None:
    """Fail loudly if a removal no longer reaches the model (vit.py calling GELU or softmax another way):
    the variant would then time the unchanged step. The pooled features are compared, not the logits, which
    the zero-initialised head makes zero either way; with autograd on, as in the training step."""
    images = torch.randn(2, config.in_channels, config.img_size, config.img_size)
    with autocast(speed.DEVICE, speed.DTYPE):  # fp32 where speed.DTYPE is None, as the step runs
        plain = model(images, return_intermediates=True)["pooled"]
        for kind in removed:
            with without((kind,)):
                if torch.equal(model(images, return_intermediates=True)["pooled"], plain):
                    raise SystemExit(f"removing {kind} left vitlab's features unchanged: update step_ablation.py")


def bench_config(name: str, rounds: int, steps: int) -> dict:
    """Step times per variant (medians over the rounds), each variant's speed against vitlab's own step and
    against PEER, paired round by round."""
    config, batch = speed.CONFIGS[name]
    torch.manual_seed(0)
    models = {variant: speed.vitlab_model(config) for variant in VARIANTS} | {PEER: speed.hf_model(config)}
    fns = {}
    for variant, model in models.items():
        removed = VARIANTS.get(variant, ())
        if removed:
            check_removal(model, config, removed)
        fns[variant] = ablated_step(speed.train_step_fn(model, config, batch, False, speed.DTYPE), removed)
    for fn in fns.values():  # warm-up
        speed.timed(fn, 2)
    per_round = speed.alternating_turn_medians(fns, rounds, calls_per_turn=steps)
    for variant, model in models.items():
        # A variant whose weights ran off to inf or NaN would time another arithmetic than the step's.
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise SystemExit(f"{variant}'s weights are no longer finite after its steps: its times mean nothing")
    result: dict = {"config": name, "batch": batch, "variants": {}}
    for variant, seconds in per_round.items():
        result["variants"][variant] = {
            "step_ms": 1000 * statistics.median(seconds),
            "vs_vitlab": median_and_quartiles([v / s for v, s in zip(per_round["vitlab"], seconds)]),
            "vs_peer": median_and_quartiles([p / s for p, s in zip(per_round[PEER], seconds)]),
        }
    return result


def write_report(results: list[dict], quick: bool) -> None:
    lines = [
        *report_head(
            "Step ablation: a training step's GELU and softmax, measured by taking them out", "step_ablation.py"
        ),
        f"- {speed.step_setup()}. A variant replaces the named work by the identity: "
        "the MLPs' GELU; the attention's softmax together with the fp32 casts around it on short rows "
        "(vit.softmax_rows); every product and other operation stays. Variants and Hugging Face take their steps in "
        "turn; speed figures are the step time of vitlab as it is (or of "
        f"{PEER}) over the variant's, paired round by round: median (quartiles). 'Share of the step' is 1 - the "
        "variant's time over vitlab's: what the removed work costs inside the step.",
        "",
    ]
    for result in results:
        lines += [
            f"## {result['config']} (batch {result['batch']})",
            "",
            f"| variant | step (ms) | speed vs vitlab | share of the step | speed vs {PEER} |",
            "| --- | --- | --- | --- | --- |",
        ]
        for variant, figures in result["variants"].items():
            share = "-" if variant in ("vitlab", PEER) else f"{1 - 1 / figures['vs_vitlab'][0]:.0%}"
            lines.append(
                f"| {variant} | {figures['step_ms']:.2f} | {ratio_with_quartiles(figures['vs_vitlab'])} | {share} "
                f"| {ratio_with_quartiles(figures['vs_peer'])} |"
            )
        lines.append("")
    record("step_ablation.md", "\n".join(lines), smoke_run=quick)


def main() -> int:
    return speed.cpu_step_benchmark_main(__doc__.splitlines()[0], "mnist,w192,s16", REPEATS, bench_config, write_report)


if __name__ == "__main__":
    raise SystemExit(main())
