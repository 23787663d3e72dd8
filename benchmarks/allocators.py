"""Benchmark: `vitlab train` on glibc's malloc (as every vitlab command sets it up) against other
allocators loaded in its place with LD_PRELOAD: tcmalloc and jemalloc where installed, or any given;
and, within one process, glibc's fastbins on (its default, which vitlab keeps) against off.

Each run trains the default MNIST model for a few epochs in a fresh process; the allocators take
turns, in an order rotated each round, so drifts in the machine's speed hit them alike. Figures per
allocator, medians over rounds: training images/s (each run's median over its epochs, evaluation
excluded), wall time of the command, its peak resident memory, and the final test accuracy (the
allocator should change nothing but speed). The fastbins take turns step by step in this process
(mallopt switches them), on the speed benchmark's training steps and batched inference. Linux with
glibc only: LD_PRELOAD is the dynamic loader's, mallopt glibc's.

    python benchmarks/allocators.py [--epochs 3] [--rounds 3] [--preload NAME=LIBRARY ...]
"""

from __future__ import annotations

import argparse
import ctypes.util
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import machine_line, median_and_quartiles, record, today, train_for_epochs

# name: the libraries that provide it, most specific first (tcmalloc_minimal is tcmalloc without its profilers).
KNOWN = {"tcmalloc": ("tcmalloc_minimal", "tcmalloc"), "jemalloc": ("jemalloc",)}
GLIBC = "glibc malloc"
M_MXFAST = 1  # mallopt's parameter for the largest block size kept in fastbins (0: none), from malloc.h


def installed_allocators() -> dict[str, str]:
    """The known allocators this machine has: name -> library, as the dynamic loader finds it."""
    found = {}
    for name, libraries in KNOWN.items():
        library = next(filter(None, map(ctypes.util.find_library, libraries)), None)
        if library:
            found[name] = library
    return found


def preload_error(library: str) -> str | None:
    """Why the dynamic loader cannot preload `library` (its one-line warning), or None when it can."""
    env = {**os.environ, "LD_PRELOAD": library}
    done = subprocess.run([sys.executable, "-c", ""], env=env, capture_output=True, text=True)
    return next((line for line in done.stderr.splitlines() if "cannot be preloaded" in line), None)


def train_run(setting: dict[str, str], epochs: int, out: Path) -> dict[str, float]:
    """One `vitlab train --epochs N` in a fresh process, with `setting` (LD_PRELOAD) in its environment;
    without it, glibc's malloc."""
    env = {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}
    records, wall, peak_mb = train_for_epochs(epochs, out, env={**env, **setting})
    return {
        "img/s": statistics.median(record["images_per_second"] for record in records),
        "wall": wall,
        "peak_mb": peak_mb,
        "accuracy": records[-1]["test_accuracy"],
    }


def fastbin_rows(pairs: int) -> list[str]:
    """Training steps and batched inference with glibc's fastbins on (its default size limit, as vitlab's
    commands run) and off, alternating within this process: the median ratio of paired times."""
    import torch

    import speed
    from vitlab.engine.runtime import reuse_freed_memory

    reuse_freed_memory(every_size=True)
    mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    on_limit = 64 * ctypes.sizeof(ctypes.c_size_t) // 4  # glibc's default fastbin limit
    torch.set_num_threads(2)
    rows = []
    for name in ("mnist", "w192"):
        config, batch = speed.CONFIGS[name]
        model = speed.vitlab_model(config)
        images = torch.randn(speed.INFER_BATCH, config.in_channels, config.img_size, config.img_size)

        def infer(model: torch.nn.Module = model, images: torch.Tensor = images) -> None:
            with torch.inference_mode(), torch.autocast("cpu", dtype=speed.DTYPE, enabled=speed.DTYPE is not None):
                model(images)

        train = speed.train_step_fn(model, config, batch, False, speed.DTYPE)
        for task, run in (("train", train), ("infer", infer)):
            count = pairs if name == "mnist" else max(pairs // 4, 4)  # w192's steps take 10x as long
            seconds: dict[bool, list[float]] = {True: [], False: []}
            for number in range(count):
                for fastbins in (True, False) if number % 2 else (False, True):
                    mallopt(M_MXFAST, on_limit if fastbins else 0)
                    run()  # the first step after a switch settles the heap
                    seconds[fastbins].append(speed.timed(run, 1))
            mallopt(M_MXFAST, on_limit)
            ratios = [on / off for on, off in zip(seconds[True], seconds[False])]
            median, low, high = median_and_quartiles(ratios)
            rows.append(f"| {name} | {task} | {count} | {median:.3f}x ({low:.3f}-{high:.3f}) |")
            print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=60, help="paired steps for the fastbins (a quarter on w192)")
    parser.add_argument(
        "--preload", action="append", default=[], metavar="NAME=LIBRARY", help="another allocator to compare"
    )
    args = parser.parse_args()
    libraries = installed_allocators()
    for entry in args.preload:
        name, _, library = entry.partition("=")
        if not library:
            parser.error(f"--preload takes NAME=LIBRARY, not {entry!r}")
        libraries[name] = library
    for name, library in libraries.items():  # the loader would only warn, and the run go on without it
        problem = preload_error(library)
        if problem:
            parser.error(f"{name}: {problem}")
    settings = {
        GLIBC: {},
        **{name: {"LD_PRELOAD": library} for name, library in libraries.items()},
    }
    fastbins = fastbin_rows(args.pairs)
    work = Path(tempfile.mkdtemp(prefix="vitlab-allocators-"))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    names = list(settings)
    for round_number in range(args.rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(train_run(settings[name], args.epochs, work / f"{names.index(name)}-{round_number}"))
            print(name, runs[name][-1], flush=True)
    medians = {
        name: {key: statistics.median(run[key] for run in done) for key in done[0]} for name, done in runs.items()
    }
    base = medians[GLIBC]
    rows = "\n".join(
        f"| {name} | {' '.join(f'{k}={v}' for k, v in settings[name].items()) or '(none)'} | {m['img/s']:,.0f} ({m['img/s'] / base['img/s']:.2f}x) "
        f"| {m['wall']:.1f} s ({base['wall'] / m['wall']:.2f}x) | {m['peak_mb']:,.0f} | "
        + " / ".join(f"{run['accuracy']:.2%}" for run in runs[name])
        + " |"
        for name, m in medians.items()
    )
    report = f"""# Memory allocators: `vitlab train` on glibc's malloc against preloaded ones

- Command: `{" ".join(["python benchmarks/allocators.py", *sys.argv[1:]])}`
  (`vitlab train --epochs {args.epochs}` with the environment in the second column)
- Machine: {machine_line()}
- Date: {today()}
- Default MNIST model and recipe; {args.rounds} rounds, the allocators taking turns in a rotated order;
  medians over rounds. glibc's malloc as every vitlab command sets it up (`runtime.reuse_freed_memory`:
  freed memory kept for reuse, no memory mapped by malloc).

| allocator | environment | training images/s (vs glibc) | wall time (speed-up) | peak RSS (MB) | final test accuracy, each round |
| --- | --- | --- | --- | --- | --- |
{rows}

## glibc's fastbins, paired within one process

The speed benchmark's training steps (a ready batch) and batched inference, with the fastbins on
(glibc's default, kept by vitlab) and off, switching by mallopt before each pair's step and
alternating the order; speed-up = time on / time off, median and interquartile range of the pairs.

| config | task | pairs | speed-up, fastbins off |
| --- | --- | --- | --- |
{chr(10).join(fastbins)}
"""
    record("allocators.md", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
