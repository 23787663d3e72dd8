"""Benchmark: `vitlab train` with no arguments, end to end, timed with its peak memory.

Runs the command exactly as a user types it (in a temporary folder), then records wall-clock
time, peak resident memory of the process, test accuracy per epoch and the final accuracy in
benchmarks/results/mnist_default.md (mnist_default_cuda.md where PyTorch sees a GPU, which
`vitlab train` then trains on).

    python benchmarks/mnist_default.py
"""

from __future__ import annotations

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
    cuda = torch.cuda.is_available()  # the device `vitlab train` picks with its default device=auto
    workdir = Path(tempfile.mkdtemp(prefix="vitlab-bench-"))
    vitlab = shutil.which("vitlab") or "vitlab"
    wall, peak_mb, _ = run_to_end([vitlab, "train", "--quiet"], cwd=workdir)
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
    report = f"""# `vitlab train` with no arguments (MNIST, default preset)

- Command: `python benchmarks/mnist_default.py` (runs `vitlab train --quiet` in a fresh folder)
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
    record("mnist_default_cuda.md" if cuda else "mnist_default.md", report)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
