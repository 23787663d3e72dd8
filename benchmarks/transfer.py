"""Benchmark: transfer learning on real data.

Pre-train the default ViT on Fashion-MNIST, fine-tune it on MNIST with only 1,000 labelled
images, and compare with training the same architecture on those 1,000 images from scratch
(same epochs, schedule and augmentation; full 10,000-image MNIST test set). Several seeds.

    python benchmarks/transfer.py [--fashion-dir ../shared/data/fashion-mnist]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine_line, record, today

HERE = Path(__file__).resolve().parent


def vitlab(*args: object) -> dict:
    """Run a vitlab command with --json and return its summary."""
    command = [sys.executable, "-m", "vitlab", *map(str, args), "--json", "--quiet", "--no-report"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion-dir", default=str(HERE.parent.parent / "shared" / "data" / "fashion-mnist"))
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=40)
    parser.add_argument("--labelled", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lr", type=float, default=0.002, help="fine-tuning (and matched scratch) learning rate")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vitlab-transfer-"))
    small = [f"data.train_subset={args.labelled}", "train.batch_size=50", "train.warmup_epochs=2"]

    started = time.perf_counter()
    pre = vitlab(
        "train",
        "--dataset",
        "fashion-mnist",
        "--recipe",  # the default model and settings, as the scratch runs below: not Fashion-MNIST's own recipe
        "mnist",
        "--epochs",
        args.pretrain_epochs,
        "--out",
        work / "fashion",
        f"data.data_dir={args.fashion_dir}",
    )
    pretrain_seconds = time.perf_counter() - started
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        common = ["--dataset", "mnist", "--epochs", args.finetune_epochs, "--seed", seed, *small]
        tuned = vitlab("finetune", work / "fashion", "--out", work / f"finetune-{seed}", *common, f"train.lr={args.lr}")
        # From scratch twice: at the fine-tuning learning rate, and at the default one (5e-3).
        scratch = vitlab("train", "--out", work / f"scratch-{seed}", *common, f"train.lr={args.lr}")
        scratch_default = vitlab("train", "--out", work / f"scratch-default-{seed}", *common)
        accuracies = [run["test_accuracy"] for run in (tuned, scratch, scratch_default)]
        rows.append((seed, *accuracies, tuned["train_seconds"], scratch["train_seconds"]))
        print(f"seed {seed}: " + "  ".join(f"{a:.2%}" for a in accuracies), flush=True)

    tuned_mean = statistics.mean(r[1] for r in rows)
    scratch_mean = statistics.mean(r[2] for r in rows)
    default_mean = statistics.mean(r[3] for r in rows)
    table = "\n".join(f"| {s} | {t:.2%} | {c:.2%} | {d:.2%} | {ts:.0f} s | {cs:.0f} s |" for s, t, c, d, ts, cs in rows)
    report = f"""# Transfer: Fashion-MNIST pre-training, MNIST with {args.labelled:,} labels

- Command: `python benchmarks/transfer.py --pretrain-epochs {args.pretrain_epochs} --finetune-epochs {args.finetune_epochs}`:
  pre-train `vitlab train --dataset fashion-mnist --recipe mnist --epochs {args.pretrain_epochs}`, then per seed
  `vitlab finetune RUN --dataset mnist --epochs {args.finetune_epochs} data.train_subset={args.labelled} train.batch_size=50 train.warmup_epochs=2 train.lr={args.lr}`
  against `vitlab train --dataset mnist` with the same epochs and data settings, at the same learning rate and at the default one
- Machine: {machine_line()}
- Date: {today()}
- Model: the default preset (mnist-tiny ViT); test set: all 10,000 MNIST test images.
- Pre-training: {pre["test_accuracy"]:.2%} Fashion-MNIST test accuracy after {args.pretrain_epochs} epochs ({pretrain_seconds:.0f} s).

| seed | fine-tuned from Fashion-MNIST | from scratch, same lr | from scratch, default lr | fine-tune time | scratch time |
| --- | --- | --- | --- | --- | --- |
{table}
| mean | {tuned_mean:.2%} | {scratch_mean:.2%} | {default_mean:.2%} | | |

Fine-tuning gains {100 * (tuned_mean - max(scratch_mean, default_mean)):+.2f} accuracy points on average over the
better of the two from-scratch settings on the same {args.labelled:,} images.
"""
    record("transfer.md", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
