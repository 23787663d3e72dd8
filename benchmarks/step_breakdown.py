"""Step breakdown: where a training step's time goes, by kind of work, vitlab against Hugging Face.

speed.py and step_costs.py say how fast each contender's training step is; this says what the time
is spent on, so that a gap can be traced to its kind of work: matrix products, attention's batched
products, GELU, softmax, layer norm, copies and casts, other element-wise work, the optimizer, and
the overhead between kernels (views, allocation, autograd's nodes, composite ops' dispatch, and the
Python and untraced time between operators). Each operator's own time (its self time, children
excluded) comes from torch.profiler and goes to one kind (KINDS, by operator name); the untraced
time is the profiled steps' wall time less the operators' total. The profiler's own bookkeeping
lengthens a step, so the unprofiled step's wall time is reported beside it. The same training step
as speed.py (speed.train_step_fn: autocast as vitlab picks, fused AdamW, a ready batch), freed
memory kept for reuse as vitlab's commands do. In each round, the contenders' steps are first timed
without the profiler, then profiled, one step of each contender in turn (as in
speed.alternating_steps); times are medians over every step, and the peer's time over vitlab's, kind
by kind, is paired step by step (median and quartiles), as this machine's speed drifts within
minutes. vitlab-compiled runs with inductor's kernel profile on, so that each fused kernel is timed
as an operator of its own.

    python benchmarks/step_breakdown.py [--configs mnist,w192,s16] [--quick]
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

import speed
from common import median_and_quartiles, ratio_with_quartiles, record, report_head

CONTENDERS = ("vitlab", "vitlab-compiled", "hf-eager")
PEER = "hf-eager"
# Rounds, and steps per contender in each: timed, then profiled, one step of each contender in turn.
REPEATS = {"mnist": (7, 5), "w192": (5, 3), "s16": (5, 1)}
UNTRACED = "between operators (Python, untraced)"
FUSED = "fused kernels (torch.compile)"
PROFILED = "step, profiled (the rows' total)"
UNPROFILED = "step, unprofiled"
OVERHEAD = "views, allocation, autograd nodes, dispatch"
OTHER = "other element-wise and reductions"
# Each kind of work and the operators whose self time it takes (names as the profiler prints them).
KINDS: dict[str, frozenset[str]] = {
    "matrix products": frozenset(
        f"aten::{op}"
        for op in ("mm", "addmm", "mv", "addmv", "addmv_", "ger", "outer", "mkldnn_convolution", "convolution_backward")
    ),
    "attention's batched products": frozenset({"aten::bmm", "aten::baddbmm"}),
    "GELU": frozenset({"aten::gelu", "aten::gelu_backward"}),
    "softmax": frozenset({"aten::_softmax", "aten::_softmax_backward_data"}),
    "layer norm": frozenset({"aten::native_layer_norm", "aten::native_layer_norm_backward"}),
    "copies and casts": frozenset({"aten::copy_", "aten::_to_copy", "aten::clone", "aten::cat", "aten::stack"}),
    "optimizer": frozenset({"aten::_fused_adamw_", "aten::_foreach_add_", "aten::_foreach_add"}),
}
ROWS = (*KINDS, FUSED, OTHER, OVERHEAD, UNTRACED)  # the report's order
# Operators that compute nothing themselves: views, allocation, and composites whose work is in their children.
NO_ARITHMETIC = frozenset(
    f"aten::{op}"
    for op in [
        "view",
        "_unsafe_view",
        "reshape",
        "transpose",
        "t",
        "permute",
        "expand",
        "unsqueeze",
        "squeeze",
        "as_strided",
        "unbind",
        "select",
        "slice",
        "split",
        "narrow",
        "flatten",
        "_reshape_alias",
        "alias",
        "detach",
        "detach_",
        "resolve_conj",
        "resolve_neg",
        "lift_fresh",
        "empty",
        "empty_like",
        "empty_strided",
        "zeros",
        "resize_",
        "as_strided_",
        "linear",
        "matmul",
        "softmax",
        "layer_norm",
        "to",
        "contiguous",
        "dropout",
        "cross_entropy_loss",
        "log_softmax",
        "nll_loss",
        "nll_loss_nd",
        "scaled_dot_product_attention",
        "result_type",
        "item",
        "_local_scalar_dense",
        "conv2d",
        "convolution",
        "_convolution",
        "numpy_T",
    ]
)


def kind_of(name: str) -> str:
    """The kind of work an operator's self time counts as (KINDS; inductor's fused kernels are element-wise)."""
    for kind, names in KINDS.items():
        if name in names:
            return kind
    if "cpp_fused" in name:
        return FUSED
    if name in NO_ARITHMETIC or not name.startswith("aten::") or "Backward" in name:
        # Autograd's nodes and engine, optimizer and compiled-graph scopes: the time they spend themselves
        # is bookkeeping and Python; their kernels are operators of their own.
        return OVERHEAD
    return OTHER


def profiled_kinds(step: Callable[[], None]) -> dict[str, float]:
    """Seconds of each kind of work in one profiled step (operators' self times), and under UNTRACED the
    step's wall time that no operator accounts for."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        wall = speed.timed(step, 1)
    seconds: dict[str, float] = {}
    for event in profiler.key_averages():
        kind = kind_of(event.key)
        seconds[kind] = seconds.get(kind, 0.0) + event.self_cpu_time_total / 1e6
    seconds[UNTRACED] = wall - sum(seconds.values())
    return seconds


def step_fns(name: str) -> dict[str, Callable[[], None]]:
    """Each contender's training step on configuration `name` at speed.py's batch size."""
    if "vitlab-compiled" in CONTENDERS:
        import torch._inductor.config as inductor_config

        # Names each fused kernel in the profile; only compilations from here on are affected.
        inductor_config.cpp.enable_kernel_profile = True
    config, batch = speed.CONFIGS[name]
    torch._dynamo.reset()
    return {c: speed.train_step_fn(speed.CONTENDERS[c](config), config, batch, False, speed.DTYPE) for c in CONTENDERS}


def bench_config(name: str, rounds: int, steps: int) -> dict:
    """Each contender's step: its wall time and the time of each kind of work, medians over every step
    measured; the peer's times over vitlab's paired step by step (the steps of a pair are taken next to
    each other: this machine's speed drifts within minutes)."""
    fns = step_fns(name)
    for fn in fns.values():  # warm-up, and compilation
        speed.timed(fn, 2)
    walls: dict[str, list[float]] = {c: [] for c in fns}
    kinds: dict[str, list[dict[str, float]]] = {c: [] for c in fns}

    def profile_into(contender: str) -> Callable[[], None]:
        return lambda: kinds[contender].append(profiled_kinds(fns[contender]))

    # Profiled in the timed steps' alternating order, so that the contenders' i-th profiles pair up.
    profiled = {c: profile_into(c) for c in fns}
    for _ in range(rounds):
        for contender, seconds in speed.alternating_steps(fns, steps).items():
            walls[contender] += seconds
        speed.alternating_steps(profiled, steps)
    result: dict = {"config": name, "batch": speed.CONFIGS[name][1], "contenders": {}}
    for contender in fns:
        names = sorted({k for per_step in kinds[contender] for k in per_step})
        seconds = {k: statistics.median(per_step.get(k, 0.0) for per_step in kinds[contender]) for k in names}
        result["contenders"][contender] = {
            "wall_ms": 1000 * statistics.median(walls[contender]),
            "profiled_ms": 1000 * sum(seconds.values()),
            "kinds_ms": {k: 1000 * s for k, s in seconds.items()},
        }
    step_pairs = list(zip(kinds["vitlab"], kinds[PEER]))
    paired = {kind: [(o.get(kind, 0.0), p.get(kind, 0.0)) for o, p in step_pairs] for kind in ROWS}
    paired[PROFILED] = [(sum(o.values()), sum(p.values())) for o, p in step_pairs]
    paired[UNPROFILED] = list(zip(walls["vitlab"], walls[PEER]))
    result["vs_peer"] = {
        kind: median_and_quartiles([p / o for o, p in pairs])
        for kind, pairs in paired.items()
        if all(o > 0 and p > 0 for o, p in pairs)
    }
    return result


def table(result: dict) -> list[str]:
    """One configuration's breakdown as a markdown table: per kind, each contender's ms per step and share,
    and the peer's time over vitlab's (paired step by step: median and quartiles)."""
    contenders = result["contenders"]
    header = " | ".join(f"{c} ms (share)" for c in contenders)
    lines = [
        f"| kind of work | {header} | {PEER} / vitlab |",
        "| --- | " + " | ".join("---" for _ in contenders) + " | --- |",
    ]
    for kind in ROWS:
        times = [figures["kinds_ms"].get(kind, 0.0) for figures in contenders.values()]
        if not any(times):
            continue
        cells = " | ".join(
            f"{ms:.2f} ({ms / figures['profiled_ms']:.0%})" for ms, figures in zip(times, contenders.values())
        )
        versus = ratio_with_quartiles(result["vs_peer"][kind]) if kind in result["vs_peer"] else "-"
        lines.append(f"| {kind} | {cells} | {versus} |")
    for label, key in ((PROFILED, "profiled_ms"), (UNPROFILED, "wall_ms")):
        cells = " | ".join(f"**{figures[key]:.2f}**" for figures in contenders.values())
        lines.append(f"| **{label}** | {cells} | **{ratio_with_quartiles(result['vs_peer'][label])}** |")
    return lines


def write_report(results: list[dict], quick: bool) -> None:
    kinds = "; ".join(
        f"{kind}: {', '.join(sorted(n.removeprefix('aten::') for n in names))}" for kind, names in KINDS.items()
    )
    lines = [
        *report_head(
            "Step breakdown: where a training step's time goes, vitlab against Hugging Face", "step_breakdown.py"
        ),
        f"- {speed.step_setup()}. Each operator's self time (torch.profiler, children "
        "excluded) counts for one kind of work, and the untraced row is the rest of the profiled steps' wall time; "
        "shares are of the profiled step, which the profiler's own bookkeeping makes longer than the unprofiled "
        "one (last row). In each round every contender's steps are timed unprofiled, then profiled, one step of "
        "each contender in turn; times are medians over the steps. The last column is "
        f"{PEER}'s time over vitlab's, paired step by step: median (quartiles).",
        f"- Kinds by operator: {kinds}; fused kernels (torch.compile): inductor's generated C++ kernels; "
        f"{OVERHEAD}: views, allocation, composite operators (linear, matmul, ...), autograd's nodes and engine, "
        f"optimizer and compiled-graph scopes (their own time, not their kernels'); {OTHER}: every other operator.",
        "",
    ]
    for result in results:
        lines += [f"## {result['config']} (batch {result['batch']})", "", *table(result), ""]
    record("step_breakdown.md", "\n".join(lines), smoke_run=quick)


def main() -> int:
    return speed.cpu_step_benchmark_main(__doc__.splitlines()[0], "mnist,w192,s16", REPEATS, bench_config, write_report)


if __name__ == "__main__":
    raise SystemExit(main())
