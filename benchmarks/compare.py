"""Benchmark: ViT against the CNN baseline under the same time budget, on MNIST and CIFAR-10 (JPEG copy).

Runs `vitlab compare` for each data set and copies its table and plot into
benchmarks/results/compare_<dataset>.md / .png, with the command, machine and date.

    python benchmarks/compare.py [--budget 10m] [--datasets mnist,cifar10]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import RESULTS, cifar_folder, machine_line, record, today
from vitlab.recipes import recipe_for

SETUPS = {
    "mnist": {"models": "mnist-tiny,resnet-small", "extra": []},
    # The same two architectures at CIFAR's 32x32 RGB input (channels follow the data set).
    "cifar10": {"models": "cifar-tiny,resnet-small", "extra": ["model.img_size=32"]},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="10m")
    parser.add_argument("--datasets", default="mnist,cifar10")
    parser.add_argument("--work", default="", help="folder for runs (default: a temporary folder)")
    args = parser.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="vitlab-compare-"))
    for name in args.datasets.split(","):
        setup = SETUPS[name]
        dataset = str(cifar_folder(work)) if name == "cifar10" else name
        out = work / f"compare-{name}"
        command = [
            sys.executable,
            "-m",
            "vitlab",
            "compare",
            "--dataset",
            dataset,
            "--models",
            setup["models"],
            "--time-budget",
            args.budget,
            "--out",
            str(out),
            *setup["extra"],
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        table = (out / "compare.md").read_text().split("\n", 2)[2]  # drop the title line
        recipe = recipe_for(dataset)
        shown = " ".join(c if " " not in c else f"'{c}'" for c in command[1:]).replace(str(work), "$WORK")
        report = f"""# ViT against a CNN on {name}, {args.budget} each

- Command: `python benchmarks/compare.py --datasets {name} --budget {args.budget}`, which runs
  `python {shown}`
- Machine: {machine_line()}
- Date: {today()}
- Same engine, data pipeline (uint8 in memory) and settings for both: the data set's recipe, as
  `compare` takes it by default ([{recipe}](../../src/vitlab/recipe_files/{recipe}.yaml): its
  augmentation, batch size and learning rate), AdamW, warm-up and cosine schedule on elapsed time;
  each model trains and evaluates for the same wall-clock budget.

{table.replace("(compare.png)", f"(compare_{name}.png)")}
"""
        record(f"compare_{name}.md", report)
        shutil.copy(out / "compare.png", RESULTS / f"compare_{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
