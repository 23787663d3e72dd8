"""Benchmark: `vitlab train` with no arguments, end to end, timed with its peak memory.

Runs the command exactly as a user types it (in a temporary folder), then records wall-clock
time, peak resident memory of the process, test accuracy per epoch and the final accuracy in
benchmarks/results/mnist_default.md (mnist_default_cuda.md where PyTorch sees a GPU, which
`vitlab train` then trains on). With --compile the same command with `train.compile=true`, the
compile time included, in mnist_default_compiled.md: whether torch.compile pays for itself on a
whole default run.

    python benchmarks/mnist_default.py [--compile]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from common import machine_line, record, run_to_end, today

TARGET_SECONDS = 600
TARGET_ACCURACY = 0.992
PEAK_MEMORY_LIMIT_MB = 2048


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="train with train.compile=true")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()  # the device `vitlab train` picks with its default device=auto
    workdir = Path(tempfile.mkdtemp(prefix="vitlab-bench-"))
    vitlab = shutil.which("vitlab") or "vitlab"
    command = [vitlab, "train", "--quiet"] + (["train.compile=true"] if args.compile else [])
    wall, peak_mb, _ = run_to_end(command, cwd=workdir)
    run_dir = next((workdir / "runs").iterdir())
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = epochs[-1]["test_accuracy"]
    config = (run_dir / "config.yaml").read_text()

    verdict_time = "met" if wall <= TARGET_SECONDS else "MISSED"
    verdict_acc = "met" if final >= TARGET_ACCURACY else "MISSED"
    verdict_mem = "met" if peak_mb < PEAK_MEMORY_LIMIT_MB else "MISSED"
    rows = "\n".join(
        f"| {e['epoch']} | {e['train_loss']:.4f} | {e['test_accuracy']:.2%} | {e['images_per_second']:,.0f} | {e['seconds']:.1f} |"
        for e in epochs
    )
    shown = " ".join(["vitlab"] + command[1:])
    title = "`vitlab train train.compile=true`" if args.compile else "`vitlab train` with no arguments"
    report = f"""# {title} (MNIST, default preset)

- Command: `python benchmarks/mnist_default.py{" --compile" if args.compile else ""}` (runs `{shown}` in a fresh folder)
- Machine: {machine_line(gpu=cuda)}
- Date: {today()}

| figure | measured | target | |
| --- | --- | --- | --- |
| wall-clock time of the whole command | {wall:.0f} s | at most {TARGET_SECONDS} s | {verdict_time} |
| final MNIST test accuracy (10,000 images) | {final:.2%} | at least {TARGET_ACCURACY:.1%} | {verdict_acc} |
| peak resident memory | {peak_mb:,.0f} MB | under {PEAK_MEMORY_LIMIT_MB} MB | {verdict_mem} |

| epoch | train loss | test accuracy | train images/s | epoch seconds (with eval) |
| --- | --- | --- | --- | --- |
{rows}

Resolved config of the run:

```yaml
{config.strip()}
```
"""
    name = "mnist_default" + ("_compiled" if args.compile else "") + ("_cuda" if cuda else "")
    record(f"{name}.md", report)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
