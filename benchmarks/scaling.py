"""Scaling: how a training step's time and memory grow with tokens (image size) and batch size.

A width-192, depth-4 ViT with patch 4 (the w192 family of the speed benchmark, shallower so the
largest images stay quick) under vitlab's defaults (bf16 autocast, or fp32 on a CPU without bf16
units; the attention kernel `model.attention=auto` picks; fused AdamW, as the Trainer; freed memory
of every size kept for reuse, as every vitlab command: runtime.reuse_freed_memory). Each point runs
in a fresh process, so its peak memory (VmHWM) is its own:
  - step time per image;
  - attention's share of the step, measured: the same step with the attention product
    softmax(QK^T/sqrt(d))V replaced by V (the projections stay), its steps taken in turn with the
    full step's (speed.alternating_steps), the share the median over those pairs with its quartiles;
  - attention's share of the FLOPs, analytic: 2T^2 D of a block's 4TD^2 + 2T^2 D + 2TDM;
  - peak resident memory, and the part above the process's size before the first step.

    python benchmarks/scaling.py [--device cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from unittest import mock

import torch
import torch.nn.functional as F

import speed
import vitlab.models.vit as vit_module
from common import machine_line, median_and_quartiles, peak_rss_mb, record, today
from vitlab.config import ModelConfig
from vitlab.engine.runtime import autocast_dtype, reuse_freed_memory

WIDTH, DEPTH, HEADS, PATCH = 192, 4, 3, 4
IMAGE_SIZES = (16, 32, 48, 64, 96, 128)  # 16 to 1,024 patch tokens
TOKEN_BATCH = 16
BATCH_SIZES = (8, 32, 128, 512)
BATCH_IMAGE = 32


def config_for(img_size: int) -> ModelConfig:
    return ModelConfig(
        img_size=img_size, in_channels=3, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_ratio=2.0
    )


def attention_flop_share(config: ModelConfig) -> float:
    """Analytic share of a block's FLOPs in QK^T and attention x V."""
    t, d, m = config.num_tokens, config.embed_dim, config.mlp_dim
    attention = 2 * t * t * d
    return attention / (4 * t * d * d + 2 * t * d * m + attention)


def passthrough_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> tuple[torch.Tensor, None]:
    """attend() without the attention product: V passes through, one row per query (the last block
    queries from the class token alone)."""
    return v[:, :, : q.shape[2]], None


def measure_point(img_size: int, batch: int, device_name: str) -> dict:
    """One point, in this process: step time with and without the attention product, and peak memory."""
    reuse_freed_memory(every_size=True)
    speed.use_device(device_name)  # its timers wait for the GPU
    device = torch.device(device_name)
    dtype = autocast_dtype("auto", device)
    config = config_for(img_size)
    model = vit_module.ViT(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    images = torch.randn(batch, 3, img_size, img_size, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def step_without_attention() -> None:
        with mock.patch.object(vit_module, "attend", passthrough_attention):
            step()

    before = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_without_attention()  # warm-ups
    step()
    first = speed.timed(step, 1)
    # About 3 s of full steps, as many without attention, each timed next to its partner: this
    # machine's speed drifts within seconds, which one stretch of each once read as a 0% share.
    pairs = max(4, min(50, int(3.0 / first)))
    times = speed.alternating_steps({"full": step, "without": step_without_attention}, pairs)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_rss_mb()
    share, share_low, share_high = median_and_quartiles([1 - w / f for f, w in zip(times["full"], times["without"])])
    return {
        "img_size": img_size,
        "tokens": config.num_tokens,
        "batch": batch,
        "ms_per_image": 1000 * statistics.median(times["full"]) / batch,
        "attention_time_share": max(0.0, share),
        "attention_time_quartiles": [max(0.0, share_low), max(0.0, share_high)],
        "attention_flop_share": attention_flop_share(config),
        "peak_mb": peak,
        "above_start_mb": peak - (0.0 if device.type == "cuda" else before),
    }


def run_point(img_size: int, batch: int, device: str) -> dict:
    """measure_point in a fresh process, so each peak memory figure belongs to one point."""
    out = subprocess.run(
        [sys.executable, __file__, "--device", device, "--point", f"{img_size},{batch}"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no error output"])[-1]
        raise SystemExit(f"scaling point {img_size}x{img_size}, batch {batch} failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| image | tokens | batch | ms / image | attention share of time (measured) | its quartiles | attention share of FLOPs | peak memory (MB) | above start (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['img_size']}x{r['img_size']} | {r['tokens']} | {r['batch']} | {r['ms_per_image']:.2f} "
            f"| {r['attention_time_share']:.0%} | {r['attention_time_quartiles'][0]:.0%}-{r['attention_time_quartiles'][1]:.0%} | {r['attention_flop_share']:.0%} | {r['peak_mb']:,.0f} | {r['above_start_mb']:,.0f} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--quick", action="store_true", help="two small points of each kind, no results file: a smoke run"
    )
    parser.add_argument("--point", default="", help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()
    if args.point:
        img_size, batch = (int(x) for x in args.point.split(","))
        print(json.dumps(measure_point(img_size, batch, args.device)))
        return 0
    sizes, batches = (IMAGE_SIZES[:2], BATCH_SIZES[:2]) if args.quick else (IMAGE_SIZES, BATCH_SIZES)
    by_tokens = []
    for size in sizes:
        by_tokens.append(run_point(size, TOKEN_BATCH, args.device))
        print(table(by_tokens)[-1], flush=True)
    by_batch = []
    for batch in batches:
        by_batch.append(run_point(BATCH_IMAGE, batch, args.device))
        print(table(by_batch)[-1], flush=True)
    crossing = next((r for r in by_tokens if r["attention_time_share"] >= 0.5), None)
    where = (
        f"attention takes half of the step or more from {crossing['tokens']} tokens ({crossing['img_size']}x{crossing['img_size']} images) on"
        if crossing
        else f"attention stays under half of the step up to {by_tokens[-1]['tokens']} tokens on"
    )
    report = [
        f"# Scaling on {args.device.upper()}: step time and memory against tokens and batch size",
        "",
        f"- Command: `python benchmarks/scaling.py{' --device cuda' if args.device == 'cuda' else ''}`",
        f"- Machine: {machine_line(gpu=args.device == 'cuda')}, {torch.get_num_threads()} threads",
        f"- Date: {today()}",
        f"- Model: width {WIDTH}, depth {DEPTH}, {HEADS} heads, MLP ratio 2, patch {PATCH}, class token; {'bf16 autocast' if autocast_dtype('auto', torch.device(args.device)) else 'fp32 (no bf16 units)'}, AdamW; median step time.",
        f"- Finding: {where} this machine; the analytic FLOP share passes one half only at T = 2D + M = {2 * WIDTH + 2 * WIDTH} tokens.",
        "",
        f"## Tokens (image size) at batch {TOKEN_BATCH}",
        "",
        *table(by_tokens),
        "",
        f"## Batch size at {BATCH_IMAGE}x{BATCH_IMAGE} ({by_batch[0]['tokens']} tokens)",
        "",
        *table(by_batch),
    ]
    record("scaling.md" if args.device == "cpu" else f"scaling_{args.device}.md", "\n".join(report), args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
