"""Gradient accumulation: the memory a training step needs, and its speed, as micro-batches get smaller.

The Trainer's own step (`Trainer.train_batch`) on ViT-S/16 at 224x224 (MNIST digits resized, the
model the speed benchmark calls s16), one global batch, with `train.accumulation_steps` N = 1, 2,
4, 8: the batch goes through in N micro-batches whose gradients add up to the whole batch's. Each
N runs in a fresh process, keeping freed memory of every size for reuse as `vitlab train` does
(runtime.reuse_freed_memory), so its peak resident memory (VmHWM) is its own; the part above the
process's size before the first step is what the step's activations and gradients took. The norm of
the first step's gradient is printed too: the same batch and weights give the same gradient for every N.

    python benchmarks/accumulation.py [--batch 64] [--steps 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import machine_line, peak_rss_mb, record, today

MICRO_BATCHES = (1, 2, 4, 8)


def measure(batch: int, micro_batches: int, steps: int, preset: str, extra: list[str]) -> dict:
    """One point, in this process: seconds per step, the first step's gradient norm and peak memory."""
    from vitlab.engine.runtime import precision_name, reuse_freed_memory
    from vitlab.engine.train import Trainer, prepare_run_dir
    from vitlab.recipes import resolve_run_config

    reuse_freed_memory(every_size=True)  # as `vitlab train` runs: freed blocks of every size are kept for reuse

    overrides = [
        f"data.train_subset={batch * (steps + 1)}",
        "data.test_subset=10",
        "data.augment=false",
        f"train.batch_size={batch}",
        f"train.accumulation_steps={micro_batches}",
        *extra,
    ]
    config = resolve_run_config(preset=preset, overrides=overrides)
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        prepare_run_dir(config, run_dir)
        trainer = Trainer(config, run_dir)
        before = peak_rss_mb()
        batches = torch.arange(batch * (steps + 1)).view(steps + 1, batch)
        generator = torch.Generator().manual_seed(0)
        trainer.train_batch(batches[0], generator)  # also warms the allocator up
        gradients = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        gradient_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in gradients])).item()
        start = time.perf_counter()
        for indices in batches[1:]:
            trainer.train_batch(indices, generator)
        seconds = (time.perf_counter() - start) / steps
    return {
        "micro_batches": micro_batches,
        "seconds_per_step": seconds,
        "gradient_norm": gradient_norm,
        "peak_mb": peak_rss_mb(),
        "before_mb": before,
        "precision": precision_name(trainer.dtype),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per point, after one untimed")
    parser.add_argument("--quick", action="store_true", help="mnist-tiny, for checking the script")
    parser.add_argument("--point", type=int, help=argparse.SUPPRESS)  # internal: measure one N and print JSON
    args = parser.parse_args()
    preset = "mnist-tiny" if args.quick else "S/16"
    # The quick check runs in fp32 on every machine: there the micro-batches' gradients agree to 1e-4,
    # while bf16 rounds them differently for each micro-batch size (2e-4 of the norm apart on AMX).
    extra = ["train.precision=fp32"] if args.quick else ["model.img_size=224"]
    if args.point:
        print(json.dumps(measure(args.batch, args.point, args.steps, preset, extra)))
        return 0
    rows = []
    for micro_batches in MICRO_BATCHES:
        command = [sys.executable, __file__, "--batch", str(args.batch), "--steps", str(args.steps)]
        command += ["--point", str(micro_batches)] + (["--quick"] if args.quick else [])
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.splitlines()[-1]))
        print(rows[-1], flush=True)
    whole = rows[0]
    lines = [
        "| micro-batches (train.accumulation_steps) | images per micro-batch | peak memory (MB) | "
        "taken by the step (MB) | vs one batch | s/step | speed vs one batch | first step's gradient norm |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        taken = row["peak_mb"] - row["before_mb"]
        lines.append(
            f"| {row['micro_batches']} | {args.batch // row['micro_batches']} | {row['peak_mb']:,.0f} | {taken:,.0f} | "
            f"{taken / max(whole['peak_mb'] - whole['before_mb'], 1.0):.2f}x | {row['seconds_per_step']:.2f} | "
            f"{whole['seconds_per_step'] / row['seconds_per_step']:.2f}x | {row['gradient_norm']:.6g} |"
        )
    model = "mnist-tiny (--quick)" if args.quick else "ViT-S/16 at 224x224 (1 channel, 10 classes)"
    report = f"""# Gradient accumulation: memory and speed of one training step

- Command: `python benchmarks/accumulation.py --batch {args.batch} --steps {args.steps}{" --quick" * args.quick}`
- Machine: {machine_line()}
- Date: {today()}
- {model}, global batch {args.batch}, {whole["precision"]}, the Trainer's own step (AdamW, fused); each row in a
  fresh process that keeps freed memory of every size for reuse, as `vitlab train` does. "Taken by the
  step": peak resident memory above the process's size before the first step (weights and data were
  loaded by then). Speed: the mean of {args.steps} timed steps after one untimed.

{chr(10).join(lines)}
"""
    record("accumulation.md", report, smoke_run=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
