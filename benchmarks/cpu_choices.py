"""Why vitlab's CPU settings are what they are: each choice against its alternative, measured.

    python benchmarks/cpu_choices.py [--quick]

1. Allocator: glibc's default malloc against `runtime.reuse_freed_memory` (what every vitlab
   command sets), each figure from its own fresh process, alternating: training and inference
   throughput, minor page faults per step, peak resident memory; in the dtype vitlab trains in
   on this CPU (bf16 autocast, or fp32 where the CPU has no bf16 units).
2. Softmax of bf16 attention scores: PyTorch's bf16 kernel against upcasting to fp32 and back,
   forward and forward + backward, for rows of 17 to 197 tokens (`models.vit.softmax_rows`);
   skipped on a CPU without bf16 units, where vitlab never computes in bf16.
3. AdamW: the foreach implementation against the fused one, the optimiser step alone.

Results go to benchmarks/results/cpu_choices.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys

import torch

import speed
from common import RESULTS, machine_line, peak_rss_mb, today
from vitlab.engine.runtime import autocast, reuse_freed_memory
from vitlab.models.vit import BF16_SOFTMAX_MIN_TOKENS, ViT

ALLOCATOR_CONFIGS = ("mnist", "w192")
SOFTMAX_TOKENS = (17, 24, 31, 32, 40, 50, 65, 100, 197)


def allocator_child(config_name: str, reuse: bool, task: str) -> dict:
    """In a fresh process (as `vitlab train` or `vitlab eval` run): throughput, faults, peak RSS."""
    if reuse:
        reuse_freed_memory()
    torch.set_num_threads(2)
    config, batch = speed.CONFIGS[config_name]
    model = speed.vitlab_model(config)
    if task == "train":
        steps = speed.REPEATS[config_name][1] * 2
        run = speed.train_step_fn(model, config, batch, False, speed.DTYPE)
    else:
        steps, batch = 10, speed.INFER_BATCH[config_name]
        images = torch.randn(batch, config.in_channels, config.img_size, config.img_size)
        model.eval()

        def run() -> None:
            with torch.inference_mode(), autocast(speed.DEVICE, speed.DTYPE):
                model(images)

    for _ in range(3):
        run()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = speed.timed(run, steps)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    return {"img/s": batch / seconds, "faults": faults, "peak_mb": peak_rss_mb()}


def allocator_rows(rounds: int) -> list[str]:
    rows = []
    for name in ALLOCATOR_CONFIGS:
        for task in ("train", "infer"):
            runs: dict[bool, list[dict]] = {False: [], True: []}
            for _ in range(rounds):
                for reuse in (False, True):
                    code = [sys.executable, __file__, "--child", name, str(int(reuse)), task]
                    out = subprocess.run(code, capture_output=True, text=True, check=True)
                    runs[reuse].append(json.loads(out.stdout.strip().splitlines()[-1]))
            medians = {
                reuse: {key: statistics.median(run[key] for run in runs[reuse]) for key in runs[reuse][0]}
                for reuse in runs
            }
            for reuse, label in ((False, "glibc default"), (True, "reuse_freed_memory")):
                figures = medians[reuse]
                rows.append(
                    f"| {name} | {task} | {label} | {figures['img/s']:,.0f} ({figures['img/s'] / medians[False]['img/s']:.2f}x) "
                    f"| {figures['faults']:,.0f} | {figures['peak_mb']:,.0f} |"
                )
                print(rows[-1], flush=True)
    return rows


def seconds_of(fn, repeats: int) -> float:
    fn()
    return speed.timed(fn, repeats)


def softmax_seconds(scores: torch.Tensor, grad: torch.Tensor, upcast: bool) -> tuple[float, float]:
    """Seconds of the softmax forward, and of forward + backward, by one of the two kernels."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.float().softmax(-1).to(x.dtype) if upcast else x.softmax(-1)

    def forward_backward() -> None:
        x = scores.detach().requires_grad_()
        forward(x).backward(grad)

    return seconds_of(lambda: forward(scores), 10), seconds_of(forward_backward, 10)


def softmax_rows_table(rounds: int) -> list[str]:
    rows = []
    for tokens in SOFTMAX_TOKENS:
        scores = torch.randn(max(2_000_000 // tokens**2, 1), tokens, tokens, dtype=torch.bfloat16)
        grad = torch.randn_like(scores)
        times: dict[str, list[float]] = {key: [] for key in ("bf16 f", "fp32 f", "bf16 fb", "fp32 fb")}
        for _ in range(rounds):  # interleaved
            for upcast, label in ((False, "bf16"), (True, "fp32")):
                forward, both = softmax_seconds(scores, grad, upcast)
                times[f"{label} f"].append(forward)
                times[f"{label} fb"].append(both)
        ms = {key: 1000 * statistics.median(values) for key, values in times.items()}
        faster = "bf16" if ms["bf16 fb"] <= ms["fp32 fb"] else "fp32"
        rows.append(
            f"| {tokens} | {ms['bf16 f']:.2f} | {ms['fp32 f']:.2f} | {ms['bf16 fb']:.2f} | {ms['fp32 fb']:.2f} "
            f"| {faster} | {'fp32' if tokens < BF16_SOFTMAX_MIN_TOKENS else 'bf16'} |"
        )
        print(rows[-1], flush=True)
    return rows


def softmax_section(rounds: int) -> list[str]:
    if speed.DTYPE is None:
        return ["Not measured: this CPU has no bf16 units, so vitlab trains in fp32 here and takes no bf16 softmax."]
    return [
        "| tokens | bf16 kernel fwd | fp32 upcast fwd | bf16 kernel fwd+bwd | fp32 upcast fwd+bwd | faster (fwd+bwd) | vitlab uses |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *softmax_rows_table(rounds),
    ]


def adamw_rows(rounds: int) -> list[str]:
    rows = []
    for name in ALLOCATOR_CONFIGS:
        config, _ = speed.CONFIGS[name]
        optimizers = {}
        for fused in (False, True):
            model = ViT(config)
            for parameter in model.parameters():
                parameter.grad = torch.randn_like(parameter)
            optimizers[fused] = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=not fused, fused=fused)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):
            for fused, optimizer in optimizers.items():
                times[fused].append(seconds_of(optimizer.step, 20))
        foreach, fused = (1000 * statistics.median(times[key]) for key in (False, True))
        parameters = sum(p.numel() for p in optimizers[True].param_groups[0]["params"])
        rows.append(f"| {name} | {parameters:,} | {foreach:.2f} | {fused:.2f} | {foreach / fused:.2f}x |")
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round each: a smoke run")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, reuse, task = args.child
        print(json.dumps(allocator_child(name, reuse == "1", task)))
        return 0
    torch.set_num_threads(2)
    rounds = 1 if args.quick else 5
    lines = [
        "# CPU choices: each of vitlab's CPU settings against its alternative",
        "",
        f"- Command: `{' '.join(['python benchmarks/cpu_choices.py', *sys.argv[1:]])}`",
        f"- Machine: {machine_line()}, 2 threads",
        f"- Date: {today()}",
        f"- Medians of {rounds} interleaved rounds; {'fp32' if speed.DTYPE is None else 'bf16 autocast'} as vitlab trains on this CPU.",
        "",
        "## Allocator: glibc's default against `runtime.reuse_freed_memory` (set by every vitlab command)",
        "",
        "Every figure from its own fresh process (as `vitlab train` and `vitlab eval` run), the two settings",
        "alternating. Train: a full AdamW step on a ready batch; infer: a forward pass without autograd;",
        "speed.py's batch sizes (mnist 256 / 256, w192 128 / 256).",
        "",
        "| config | task | malloc | img/s (vs default) | minor page faults / step | peak RSS (MB) |",
        "| --- | --- | --- | --- | --- | --- |",
        *allocator_rows(rounds),
        "",
        "## Softmax of bf16 attention scores (ms for 2M scores: rows x tokens x tokens)",
        "",
        *softmax_section(rounds),
        "",
        "## AdamW step alone (ms), all parameters with gradients",
        "",
        "| config | parameters | foreach | fused | fused speed-up |",
        "| --- | --- | --- | --- | --- |",
        *adamw_rows(rounds),
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cpu_choices.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
