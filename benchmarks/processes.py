"""Benchmark: 2 processes x 1 thread (torchrun + DDP, gloo) against 1 process x 2 threads.

Both train the default MNIST model with the same global batch for the same epochs; the figure
is training images/s (median over epochs, evaluation excluded) and wall time. Repeated in
alternation so drifts in machine speed hit both alike.

    python benchmarks/processes.py [--epochs 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from common import machine_line, record, today, train_for_epochs


def run(nproc: int, epochs: int, out: Path) -> tuple[float, float]:
    """(median training images/s, wall seconds) of one run."""
    threads = 2 // nproc
    records, wall, _ = train_for_epochs(epochs, out, ["--nproc", str(nproc), f"train.threads={threads}"])
    return statistics.median(record["images_per_second"] for record in records), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vitlab-nproc-"))
    results: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    for repeat in range(args.repeats):
        for nproc in (2, 1) if repeat % 2 else (1, 2):
            results[nproc].append(run(nproc, args.epochs, work / f"n{nproc}-{repeat}"))
            print(nproc, results[nproc][-1], flush=True)
    speed = {n: statistics.median(s for s, _ in r) for n, r in results.items()}
    wall = {n: statistics.median(w for _, w in r) for n, r in results.items()}
    report = f"""# Processes against threads: 2 x 1 (torchrun + DDP) vs 1 x 2

- Command: `python benchmarks/processes.py --epochs {args.epochs} --repeats {args.repeats}`
  (`vitlab train --epochs {args.epochs} --nproc 2 train.threads=1` against `--nproc 1 train.threads=2`)
- Machine: {machine_line()}
- Date: {today()}
- Default MNIST model and recipe, global batch 256 (2 x 128 per process under DDP).

| setup | training images/s (median) | wall time (median, with start-up and evaluation) |
| --- | --- | --- |
| 1 process x 2 threads | {speed[1]:,.0f} | {wall[1]:.1f} s |
| 2 processes x 1 thread | {speed[2]:,.0f} | {wall[2]:.1f} s |

Ratio (2 x 1 over 1 x 2): {speed[2] / speed[1]:.2f}x in training images/s, {wall[1] / wall[2]:.2f}x in wall time.
"""
    record("processes.md", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
