"""Why vitlab's CPU settings are what they are: each choice against its alternative, measured.

    python benchmarks/cpu_choices.py [--quick]

1. Allocator: glibc's default malloc against `runtime.reuse_freed_memory` with its thresholds alone
   (what a program importing vitlab gets) and with `every_size` (what every vitlab command sets),
   each figure from its own fresh process, alternating: training and inference throughput, minor
   page faults per step, peak resident memory; in the dtype vitlab trains in on this CPU (bf16
   autocast, or fp32 where the CPU has no bf16 units).
2. Softmax of bf16 attention scores: PyTorch's bf16 kernel against upcasting to fp32 and back,
   forward and forward + backward, for rows of 17 to 197 tokens (`models.vit.softmax_rows`);
   skipped on a CPU without bf16 units, where vitlab never computes in bf16.
3. AdamW: the foreach implementation against the fused one, the optimiser step alone.
4. Attention kernel: PyTorch's fused `scaled_dot_product_attention` against the explicit
   softmax(QK^T/sqrt(d))V of `models.vit.attend`, the same model forced to each through
   `set_attention_kernel`: training steps at 17 to 197 tokens (the MNIST model's width and depth,
   other image and patch sizes), on the width-192 model (also with 6 heads: head size 32) and on
   ViT-S/16, inference at batch 256 and batch 1; what `model.attention=auto` picks beside each
   (`fused_kernel_pays`).

Results go to benchmarks/results/cpu_choices.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import resource
import statistics
import subprocess
import sys
from unittest import mock

import torch

import speed
from common import median_and_quartiles, peak_rss_mb, record, report_head
from vitlab.config import ModelConfig
from vitlab.engine.runtime import autocast, reuse_freed_memory
from vitlab.models.registry import model_config
from vitlab.models.vit import BF16_SOFTMAX_MIN_TOKENS, ViT

ALLOCATOR_CONFIGS = ("mnist", "w192", "s16")
ALLOCATOR_MAX_ROUNDS = {"s16": 3}  # ViT-S/16's training steps take seconds each
# malloc settings: glibc's own, then runtime.reuse_freed_memory as a library import and as a vitlab command sets it.
ALLOCATOR_SETTINGS = {
    "default": "glibc default",
    "thresholds": "reuse_freed_memory()",
    "every_size": "reuse_freed_memory(every_size=True)",
}
SOFTMAX_TOKENS = (17, 24, 31, 32, 40, 50, 65, 100, 197)
# The MNIST model's width and depth at other token counts: (image side, patch) -> 1 + (side / patch)^2.
KERNEL_TOKEN_SWEEP = ((28, 7), (20, 4), (24, 4), (28, 4), (32, 4), (36, 4), (40, 4))
# The w192 model (head size 64, against the MNIST model's 16) at its own and fewer tokens, and ViT-S/16.
KERNEL_W192_SIDES = (24, 28, 32)
# Past the fp32 rule's line at 112 keys (vit.FUSED_CPU_MIN_KEYS), with fewer steps (longer ones): the MNIST
# width at 122, 145 and 197 keys, and head size 32 (w192 with 6 heads) at 101 and 145 keys.
KERNEL_LONG_SIDES = (44, 48, 56)
KERNEL_HEAD32_SIDES = (40, 48)


def allocator_child(config_name: str, setting: str, task: str) -> dict:
    """In a fresh process (as `vitlab train` or `vitlab eval` run): throughput, faults, peak RSS."""
    if setting != "default":
        reuse_freed_memory(every_size=setting == "every_size")
    torch.set_num_threads(2)
    config, batch = speed.CONFIGS[config_name]
    model = speed.vitlab_model(config)
    if task == "train":
        steps = speed.REPEATS[config_name][1] * 2
        run = speed.train_step_fn(model, config, batch, False, speed.DTYPE)
    else:
        steps, batch = 10, speed.INFER_BATCH
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


def allocator_rounds(name: str, rounds: int) -> int:
    """Rounds of the allocator section for a configuration: `rounds`, capped by ALLOCATOR_MAX_ROUNDS."""
    return min(rounds, ALLOCATOR_MAX_ROUNDS.get(name, rounds))


def allocator_rows(rounds: int) -> list[str]:
    rows = []
    for name in ALLOCATOR_CONFIGS:
        for task in ("train", "infer"):
            runs: dict[str, list[dict]] = {setting: [] for setting in ALLOCATOR_SETTINGS}
            for _ in range(allocator_rounds(name, rounds)):
                for setting in ALLOCATOR_SETTINGS:
                    code = [sys.executable, __file__, "--child", name, setting, task]
                    out = subprocess.run(code, capture_output=True, text=True, check=True)
                    runs[setting].append(json.loads(out.stdout.strip().splitlines()[-1]))
            medians = {
                setting: {key: statistics.median(run[key] for run in runs[setting]) for key in runs[setting][0]}
                for setting in runs
            }
            default = medians["default"]
            for setting, label in ALLOCATOR_SETTINGS.items():
                figures = medians[setting]
                rows.append(
                    f"| {name} | {task} | {label} | {speed.rate(figures['img/s'])} ({figures['img/s'] / default['img/s']:.2f}x) "
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


def fused_speed_ups(times: dict[str, list[float]]) -> list[float]:
    """Explicit / fused time of each pair of calls taken in turn (speed.alternating_steps)."""
    return [e / f for e, f in zip(times["explicit"], times["fused"])]


def mnist_width(side: int, patch: int = 4) -> ModelConfig:
    """The MNIST model's width and depth on side x side images: 1 + (side / patch)^2 tokens."""
    return model_config(speed.DEFAULT_PRESET, img_size=side, patch_size=patch)


def kernel_pair(config) -> dict[str, torch.nn.Module]:
    """The same weights twice, one copy forced onto each attention kernel."""
    explicit = speed.vitlab_model(config)
    fused = speed.vitlab_model(config)
    fused.load_state_dict(explicit.state_dict())
    explicit.set_attention_kernel("manual")
    fused.set_attention_kernel("sdpa")
    return {"explicit": explicit, "fused": fused}


def auto_picks(config, batch: int, training: bool) -> str:
    """The kernel `model.attention=auto` took in one forward pass of this model and batch size, in
    vitlab's dtype on this CPU: the fused kernel's calls counted, every block's or none ('mixed' else)."""
    model = ViT(config).train(training)
    images = torch.randn(batch, config.in_channels, config.img_size, config.img_size)
    fused = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    patched = mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", counting)
    with patched, torch.set_grad_enabled(training), autocast(speed.DEVICE, speed.DTYPE):
        model(images)
    return {0: "explicit", config.depth: "fused"}.get(len(calls), "mixed")


def kernel_training_row(label: str, config, batch: int, steps: int) -> str:
    """Training steps of the two kernels alternated step by step (speed.alternating_steps): ms per step."""
    steps_of = {
        name: speed.train_step_fn(model, config, batch, False, speed.DTYPE)
        for name, model in kernel_pair(config).items()
    }
    for step in steps_of.values():
        step()
    times = speed.alternating_steps(steps_of, steps)
    ratios = fused_speed_ups(times)  # each step against its partner
    explicit, fused = (1000 * statistics.median(times[name]) for name in ("explicit", "fused"))
    median, low, high = median_and_quartiles(ratios)
    row = (
        f"| {label} | {config.num_patches + 1} | {config.embed_dim // config.num_heads} | {batch} | {explicit:.1f} | {fused:.1f} "
        f"| {median:.3f}x ({low:.2f}-{high:.2f}) | {auto_picks(config, batch, True)} |"
    )
    print(row, flush=True)
    return row


def kernel_training_rows(quick: bool) -> list[str]:
    rows = []
    for side, patch in KERNEL_TOKEN_SWEEP:
        config = mnist_width(side, patch)
        rows.append(kernel_training_row(f"mnist width, {side}px / patch {patch}", config, 256, 10 if quick else 100))
    for side in KERNEL_LONG_SIDES:
        config = mnist_width(side)
        rows.append(kernel_training_row(f"mnist width, {side}px / patch 4", config, 256, 2 if quick else 16))
    w192, batch = speed.CONFIGS["w192"]
    for side in KERNEL_W192_SIDES:
        config = dataclasses.replace(w192, img_size=side)
        rows.append(kernel_training_row(f"w192, {side}px / patch 4", config, batch, 2 if quick else 16))
    for side in KERNEL_HEAD32_SIDES:
        config = dataclasses.replace(w192, img_size=side, num_heads=6)
        rows.append(kernel_training_row(f"w192, 6 heads, {side}px / patch 4", config, batch, 2 if quick else 8))
    s16, batch = speed.CONFIGS["s16"]
    rows.append(kernel_training_row("ViT-S/16, 224px", s16, batch, 2 if quick else 6))
    return rows


def kernel_inference_cases() -> list[tuple[str, ModelConfig, int]]:
    """(label, model, batch): the speed benchmark's three models at their inference batch, and the MNIST
    width at the training sweep's long rows (below and past the 112-key line)."""
    cases = [(name, config, speed.INFER_BATCH) for name, (config, _) in speed.CONFIGS.items()]
    long_rows = [(f"mnist width, {side}px / patch 4", mnist_width(side), 256) for side in (40, *KERNEL_LONG_SIDES[1:])]
    return cases[:1] + long_rows + cases[1:]


def kernel_inference_rows(passes: int) -> list[str]:
    """Batched throughput and batch-1 latency of the two kernels in turn (speed.alternating_steps):
    batched calls one each in turn, single images in runs of 10 consecutive calls per kernel (a model
    serving single images answers them one after another; see speed.time_inference), each speed-up the
    median over calls paired by their place in the turn."""
    rows = []
    for name, config, size in kernel_inference_cases():
        models = {kernel: model.eval() for kernel, model in kernel_pair(config).items()}
        batch = torch.randn(size, config.in_channels, config.img_size, config.img_size)
        image = batch[:1]
        with torch.inference_mode(), autocast(speed.DEVICE, speed.DTYPE):
            for model in models.values():
                model(batch), model(image)
            batched = speed.alternating_steps({k: functools.partial(m, batch) for k, m in models.items()}, passes)
            single = speed.alternating_steps(
                {k: functools.partial(m, image) for k, m in models.items()}, passes, calls_per_turn=10
            )
        img_s = {kernel: size / statistics.median(values) for kernel, values in batched.items()}
        ms = {kernel: 1000 * statistics.median(values) for kernel, values in single.items()}
        rows.append(
            f"| {name} | {config.num_patches + 1} | {config.embed_dim // config.num_heads} | {size} "
            f"| {img_s['explicit']:,.0f} | {img_s['fused']:,.0f} | {statistics.median(fused_speed_ups(batched)):.2f}x "
            f"| {ms['explicit']:.3f} | {ms['fused']:.3f} | {statistics.median(fused_speed_ups(single)):.2f}x "
            f"| {auto_picks(config, len(batch), False)} / {auto_picks(config, 1, False)} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round each: a smoke run")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, setting, task = args.child
        print(json.dumps(allocator_child(name, setting, task)))
        return 0
    torch.set_num_threads(2)
    reuse_freed_memory(every_size=True)  # as every vitlab command; the allocator section's children choose their own
    rounds = 1 if args.quick else 5
    lines = [
        *report_head("CPU choices: each of vitlab's CPU settings against its alternative", "cpu_choices.py"),
        f"- Medians of {rounds} interleaved rounds; {'fp32' if speed.DTYPE is None else 'bf16 autocast'} as vitlab trains on this CPU;"
        " freed memory of every size kept for reuse as vitlab's commands keep it"
        " (`runtime.reuse_freed_memory(every_size=True)`) outside the allocator section.",
        "",
        "## Allocator: glibc's default against `runtime.reuse_freed_memory`",
        "",
        "Every figure from its own fresh process (as `vitlab train` and `vitlab eval` run), the three settings",
        "alternating: glibc's own; `reuse_freed_memory()`, mmap and trim thresholds raised (a program that",
        "imports vitlab); `every_size=True`, no memory mapped by malloc at all (every vitlab command). Train: a full",
        "AdamW step on a ready batch; infer: a forward pass without autograd; speed.py's batch sizes (mnist 256 / 256,",
        f"w192 128 / 256, s16 32 / 32); s16 in {allocator_rounds('s16', rounds)} rounds (its steps take seconds).",
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
        "",
        "## Attention kernel: PyTorch's fused kernel against the explicit softmax(QK^T/sqrt(d))V",
        "",
        "The same weights in two models, one forced onto each kernel (`set_attention_kernel('manual' | 'sdpa')`),",
        f"in {'fp32' if speed.DTYPE is None else 'bf16 autocast'}. Training: full AdamW steps on a ready batch, the two kernels",
        "alternating step by step; speed-up = explicit / fused time of paired steps, median and interquartile",
        "range. The sweep keeps the MNIST model's width and depth (64, 4 blocks, 4 heads) and changes the",
        "image and patch size to change the number of tokens (16 steps from 122 tokens on, 100 below); the w192",
        "model (head size 64) runs at 24, 28 and 32 px, and with 6 heads (head size 32) at 40 and 48 px (8 steps).",
        "",
        "| model | tokens | head size | batch | explicit ms/step | fused ms/step | fused speed-up (IQR) | auto picks |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *kernel_training_rows(args.quick),
        "",
        "Inference without autograd: throughput at the batch shown and median batch-1 latency; the two kernels take",
        f"turns ({6 * rounds} batched calls one each in turn; {6 * rounds} runs of 10 consecutive single-image calls each), each speed-up the median over calls paired by their place in the turn.",
        "",
        "| config | tokens | head size | batch | explicit img/s | fused img/s | fused speed-up | explicit ms (b=1) | fused ms (b=1) | fused speed-up | auto picks (batch / 1) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *kernel_inference_rows(6 * rounds),
    ]
    record("cpu_choices.md", "\n".join(lines), smoke_run=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
