"""Accuracy within a time budget: MNIST, Fashion-MNIST and CIFAR-10 (JPEG copy) on this machine.

Each setup is one `vitlab train --time-budget ...` run (the learning-rate schedule runs on elapsed
time, so the run ends on time with the schedule decayed). The results file records the final test
accuracy (raw and EMA weights), the accuracy reached on the way at 5 and 15 minutes (the last
evaluation before that time, with the schedule not yet decayed), every epoch, and the command.

    python benchmarks/accuracy.py SETUP [--budget 30m] [--work DIR]

SETUP is one of the names in SETUPS below: the fashion-mnist and cifar10 recipes use the
convolutional stem, and their "-patch" setups the plain patch-embedding ViT beside them; for
MNIST, "mnist" is the plain ViT and "mnist-conv" the conv-stem one. The figures go to
results/accuracy_SETUP.md (accuracy_SETUP_BUDGET.md for another budget than the setup's).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import SHARED_DATA, cifar_folder, machine_line, record, today

# name: (data set, default budget, target accuracy, vitlab train arguments)
SETUPS: dict[str, tuple[str, str, float, list[str]]] = {
    "mnist": (
        "mnist",
        "60m",
        0.996,
        ["--recipe", "mnist", "--model", "mnist-base", "train.lr=0.003", "train.ema_decay=0.999", "train.eval_every=2"],
    ),
    # mnist-small with the convolutional stem: twice mnist-base's steps per minute here.
    "mnist-conv": (
        "mnist",
        "60m",
        0.996,
        [
            "--recipe",
            "mnist",
            "--model",
            "mnist-small",
            "model.stem=conv",
            "train.lr=0.003",
            "train.ema_decay=0.999",
            "train.eval_every=2",
        ],
    ),
    # The shipped recipes (convolutional stem), and the plain patch-embedding ViT beside each.
    # Fashion-MNIST trains as 2 processes x 1 thread (10% more images/s than 1 x 2 here: processes.md).
    "fashion-mnist": ("fashion-mnist", "30m", 0.925, ["--recipe", "fashion-mnist", "--nproc", "2"]),
    "fashion-mnist-patch": (
        "fashion-mnist",
        "30m",
        0.925,
        ["--recipe", "fashion-mnist", "--nproc", "2", "model.stem=patch"],
    ),
    "cifar10": ("cifar10", "30m", 0.80, ["--recipe", "cifar10"]),
    "cifar10-patch": (
        "cifar10",
        "30m",
        0.80,
        ["--recipe", "cifar10", "model.stem=patch", "model.patch_size=4", "model.embed_dim=96", "model.num_heads=3"],
    ),
}
CHECKPOINTS_MINUTES = (5, 15)


def dataset_arguments(dataset: str, work: Path) -> list[str]:
    """--dataset (and the data folder) for a setup: the shared copies of the real files."""
    if dataset == "cifar10":
        return ["--dataset", str(cifar_folder(work))]
    if dataset == "fashion-mnist":
        return ["--dataset", dataset, f"data.data_dir={SHARED_DATA / 'fashion-mnist'}"]
    return ["--dataset", dataset]


def accuracy_before(rows: list[dict], seconds: float) -> dict | None:
    """The last evaluated epoch that ended within `seconds` of the start."""
    done = [row for row in rows if row["elapsed"] <= seconds]
    return done[-1] if done else None


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setup", choices=sorted(SETUPS))
    parser.add_argument("--budget", default="", help="time budget (default: the setup's)")
    parser.add_argument("--work", default="", help="folder for the run (default: a temporary folder)")
    args = parser.parse_args()
    dataset, default_budget, target, train_args = SETUPS[args.setup]
    budget = args.budget or default_budget
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="vitlab-accuracy-"))
    run_dir = work / f"run-{args.setup}"
    command = [
        sys.executable,
        "-m",
        "vitlab",
        "train",
        *dataset_arguments(dataset, work),
        *train_args,
        "--time-budget",
        budget,
        "--out",
        str(run_dir),
        "--quiet",
    ]
    started = time.perf_counter()
    done = subprocess.run(command)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return done.returncode
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = rows[-1]
    has_ema = final.get("ema_test_accuracy") is not None
    best_final = max(final["test_accuracy"], final.get("ema_test_accuracy") or 0.0)
    shown = " ".join(command[1:]).replace(str(work), "$WORK")
    points = []
    for minutes in CHECKPOINTS_MINUTES:
        row = accuracy_before(rows, minutes * 60)
        points.append(
            f"| {minutes} min | {row['epoch'] if row else '—'} | {percent(row and row['test_accuracy'])} "
            f"| {percent(row and row.get('ema_test_accuracy'))} |"
        )
    points.append(
        f"| end ({final['elapsed'] / 60:.1f} min) | {final['epoch']} | {percent(final['test_accuracy'])} "
        f"| {percent(final.get('ema_test_accuracy'))} |"
    )
    epochs = "\n".join(
        f"| {r['epoch']} | {r['elapsed']:.0f} | {r['lr']:.2e} | {r['train_loss']:.3f} | {percent(r['test_accuracy'])} "
        f"| {percent(r.get('ema_test_accuracy'))} | {r['images_per_second']:,.0f} |"
        for r in rows
    )
    verdict = "met" if best_final >= target else "NOT met"
    config = (run_dir / "config.yaml").read_text()
    report = f"""# Accuracy in a time budget: {args.setup}, {budget}

- Command: `python benchmarks/accuracy.py {args.setup}{" --budget " + args.budget if args.budget else ""}`, which runs
  `python {shown}`
- Machine: {machine_line()}
- Date: {today()}
- Wall time of the whole command (start-up, data loading, training, every evaluation): {wall / 60:.1f} min
- Target: {100 * target:.1f}% test accuracy: **{verdict}** (final: {percent(final["test_accuracy"])} raw weights{", " + percent(final.get("ema_test_accuracy")) + " EMA weights" if has_ema else ""})
- The 5 and 15 minute rows are evaluations on the way through the {budget} schedule (learning rate
  still high); a run given only 5 or 15 minutes decays its schedule by then and ends higher.

| time | epochs done | test accuracy | EMA test accuracy |
| --- | --- | --- | --- |
{chr(10).join(points)}

## Every epoch

| epoch | elapsed (s) | lr | train loss | test accuracy | EMA test accuracy | train img/s |
| --- | --- | --- | --- | --- | --- | --- |
{epochs}

## Resolved config (config.yaml of the run)

```yaml
{config.rstrip()}
```
"""
    # Another budget than the setup's gets its own file, beside the default one.
    suffix = "" if budget == default_budget else f"_{budget}"
    record(f"accuracy_{args.setup}{suffix}.md", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
