"""Compiled attention layout: keys-major scores against rows, in training steps through torch.compile.

Under torch.compile on CPU, `models.vit.attend` computes its explicit attention scores keys-major,
(batch, heads, keys, queries), and takes the softmax over keys in that middle dimension, so that
inductor's generated kernel runs 16 queries per vector; in rows, (batch, heads, queries, keys), each
row of 17 keys (the MNIST model) is reduced inside one vector and a masked one. This times the two
layouts (`vit.COMPILED_CPU_KEYS_MAJOR_SCORES` on and off) in compiled training steps of speed.py's
models: the same weights in two compiled models, speed.py's training step (fused AdamW, autocast as
vitlab picks, a ready batch), the two taking steps in turn (order reversed every other turn); the
speed-up is the rows step's time over the keys-major step's next to it, median and quartiles.

    python benchmarks/compiled_attention.py [--configs mnist,w192,s16] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from collections.abc import Callable

import torch

import speed
from common import median_and_quartiles, ratio_with_quartiles, record, report_head
from vitlab.engine.runtime import reuse_freed_memory
from vitlab.models import vit

PAIRS = {"mnist": 100, "w192": 16, "s16": 8}  # paired steps: fewer where a step takes longer
LAYOUTS = {"rows": False, "keys-major": True}


def layout_steps(name: str) -> dict[str, Callable[[], None]]:
    """A compiled training step per layout, on copies of one model; each step sets its layout first, so
    that torch.compile's guard on the flag picks the graph compiled for it."""
    config, batch = speed.CONFIGS[name]
    torch._dynamo.reset()
    torch.manual_seed(0)
    base = speed.vitlab_model(config)
    steps = {}
    for layout, keys_major in LAYOUTS.items():
        model = copy.deepcopy(base)
        model.logits = torch.compile(model.forward, dynamic=False)
        step = speed.train_step_fn(model, config, batch, with_data=False, dtype=speed.DTYPE)

        def in_layout(step=step, keys_major=keys_major) -> None:
            vit.COMPILED_CPU_KEYS_MAJOR_SCORES = keys_major
            step()

        for _ in range(3):  # compile, then warm
            in_layout()
        steps[layout] = in_layout
    return steps


def measure(name: str, pairs: int) -> dict:
    steps = layout_steps(name)
    times = speed.alternating_steps(steps, pairs)
    vit.COMPILED_CPU_KEYS_MAJOR_SCORES = True
    speed_ups = [rows / keys_major for rows, keys_major in zip(times["rows"], times["keys-major"], strict=True)]
    return {
        "config": name,
        "batch": speed.CONFIGS[name][1],
        "ms": {layout: 1000 * statistics.median(seconds) for layout, seconds in times.items()},
        "speed_up": median_and_quartiles(speed_ups),
        "pairs": pairs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="mnist,w192,s16")
    parser.add_argument(
        "--quick", action="store_true", help="two pairs of steps each: a smoke run that records nothing"
    )
    args = parser.parse_args()
    speed.use_device("cpu")
    reuse_freed_memory(every_size=True)  # as every vitlab command
    rows = []
    for name in args.configs.split(","):
        if name not in PAIRS:
            parser.error(f"unknown configuration {name!r}; choose from {', '.join(PAIRS)}")
        result = measure(name, 2 if args.quick else PAIRS[name])
        config = speed.CONFIGS[name][0]
        rows.append(
            f"| {name} (batch {result['batch']}) | {config.num_patches + 1} | {result['ms']['rows']:.1f} "
            f"| {result['ms']['keys-major']:.1f} | {ratio_with_quartiles(result['speed_up'])} | {result['pairs']} |"
        )
        print(rows[-1], flush=True)
    precision = "fp32" if speed.DTYPE is None else "bf16 autocast"
    report = "\n".join(
        [
            *report_head("Compiled attention layout: keys-major scores against rows", "compiled_attention.py"),
            f"- Compiled training steps (torch.compile, inductor) in {precision}, speed.py's models and batches;"
            " the two layouts' steps in turn, the speed-up paired step by step: median (quartiles).",
            "",
            "| config | tokens | rows ms/step | keys-major ms/step | keys-major speed-up | pairs |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    record("compiled_attention.md", report, smoke_run=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
