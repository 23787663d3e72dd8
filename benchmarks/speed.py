"""Speed benchmark: vitlab against Hugging Face transformers' ViT, and against the machine's limit.

For each configuration, in one process, with contenders interleaved and each measurement
repeated (median and spread):
  - training throughput: images/s of a full AdamW step at the same batch, dtype and threads,
    on a ready batch ("model only") and from uint8 images through vitlab's batch pipeline
    (indexing, augmentation, normalisation: "with data");
  - inference throughput at batch 256 and latency at batch 1 (median and p99);
  - the machine's limit: a large matrix product in fp32 and bf16 (GFLOP/s);
  - model FLOP utilisation (MFU): achieved training FLOP/s over the matrix-product peak of the
    dtype training runs in (bf16; fp32 on a CPU without bf16 units, where vitlab trains in fp32),
    with FLOPs counted analytically (vitlab.models.flops: 2 x multiply-accumulates of every
    matrix product; a training step is 3x the forward);
  - peak resident memory of a training loop, measured in a fresh subprocess per contender;
  - vitlab's matrix products alone: every product a training step calls (recorded through the
    dispatcher, same shapes, layouts and dtypes) replayed without the rest of the step, timed in
    the same alternation: their share of the step, and the MFU a step would reach if nothing
    else took time (a ceiling set by the matrix-product kernels at these shapes).

    python benchmarks/speed.py [--quick] [--configs mnist,w192,s16] [--device cuda] [--rounds N] [--out FILE]

Hugging Face runs with both attention settings (eager and SDPA), and through torch.compile; the
ratio is taken like with like: eager rows against the faster eager setting, compiled rows against
Hugging Face compiled (peer_of); vitlab with its defaults (bf16 autocast where the device has bf16 units, else fp32;
the attention kernel `model.attention=auto` picks: SDPA on CUDA, on CPU explicit when training under
bf16, otherwise SDPA for one image and for long, wide heads: `models.vit.fused_kernel_pays`), and as its
own row through torch.compile (as `train.compile: true` on CPU; on CUDA in mode reduce-overhead, with
CUDA graphs, which `train.compile` does not use).
Every contender gets the fused AdamW that vitlab's Trainer uses, and the whole process keeps
freed memory of every size for reuse as every vitlab command does (runtime.reuse_freed_memory; measured on
its own by cpu_choices.py). On CUDA the batches are larger (a GPU idles on CPU-sized batches),
peak memory is the CUDA allocator's high-water mark, and results go to speed_cuda.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from common import record, report_head
from vitlab.config import ModelConfig
from vitlab.data.augment import random_affine
from vitlab.data.tensors import to_model_input
from vitlab.engine.runtime import autocast_dtype, reuse_freed_memory
from vitlab.export import OnnxClassifier, export_onnx
from vitlab.models.flops import forward_flops, training_flops
from vitlab.models.registry import DEFAULT_PRESET, model_config
from vitlab.models.vit import ViT

DEVICE = torch.device("cpu")  # set by --device before anything is built
CONFIGS: dict[str, tuple[ModelConfig, int]] = {
    # name: (architecture, training batch size)
    "mnist": (model_config(DEFAULT_PRESET), 256),
    "w192": (
        ModelConfig(img_size=32, in_channels=3, patch_size=4, embed_dim=192, depth=9, num_heads=3, mlp_ratio=2.0),
        128,
    ),
    "s16": (model_config("S/16"), 32),
}
# Rounds (contenders interleaved in each) and timed steps per round: fewer for the slow configurations.
REPEATS = {"mnist": (5, 10), "w192": (3, 3), "s16": (3, 2)}
INFER_BATCH = 256  # batched inference, as issue #4 asks, on every configuration and device
CUDA_BATCH = {"mnist": 2048, "w192": 512, "s16": 256}
CUDA_REPEATS = {"mnist": (5, 20), "w192": (5, 10), "s16": (3, 5)}


def use_device(name: str) -> None:
    """Point the benchmark at a device: its batches, repeats and autocast dtype."""
    global DEVICE, DTYPE
    DEVICE = torch.device(name)
    DTYPE = autocast_dtype("auto", DEVICE)
    if DEVICE.type == "cuda":
        for key, (config, _) in CONFIGS.items():
            CONFIGS[key] = (config, CUDA_BATCH[key])
        REPEATS.update(CUDA_REPEATS)


def hf_model(config: ModelConfig, attention: str = "eager") -> torch.nn.Module:
    """The same architecture in Hugging Face transformers: class token, learned positions, pre-norm."""
    from transformers import ViTConfig, ViTForImageClassification

    hf_config = ViTConfig(
        image_size=config.img_size,
        patch_size=config.patch_size,
        num_channels=config.in_channels,
        hidden_size=config.embed_dim,
        num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads,
        intermediate_size=config.mlp_dim,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=config.num_classes,
        attn_implementation=attention,
    )
    model = ViTForImageClassification(hf_config).to(DEVICE)

    def forward(images: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=images).logits

    model.logits = forward
    return model


def vitlab_model(config: ModelConfig) -> torch.nn.Module:
    model = ViT(config).to(DEVICE)
    model.logits = model.forward
    return model


def compiled(model: torch.nn.Module, dynamic: bool | None = None) -> torch.nn.Module:
    """The model's logits through torch.compile: inductor's fused kernels, as `train.compile: true` runs
    vitlab's model on CPU; on CUDA also CUDA graphs (mode reduce-overhead), which remove launch overhead
    and which `train.compile` does not use (its default mode has none). `dynamic` is torch.compile's:
    False keeps a static graph even where another model's graph of another batch size came first."""
    import torch._inductor.config as inductor_config

    # Inductor's tiling analysis trips an assertion on the w192 model (torch 2.11, CUDA); it only picks tile shapes.
    if hasattr(inductor_config.triton, "coalesce_tiling_analysis"):
        inductor_config.triton.coalesce_tiling_analysis = False
    model.logits = torch.compile(
        model.logits, mode="reduce-overhead" if DEVICE.type == "cuda" else None, dynamic=dynamic
    )
    return model


def vitlab_compiled(config: ModelConfig, dynamic: bool | None = None) -> torch.nn.Module:
    return compiled(vitlab_model(config), dynamic)


def hf_compiled(config: ModelConfig) -> torch.nn.Module:
    """Hugging Face's model through torch.compile as vitlab-compiled, with its faster attention setting on
    the device: eager on CPU (where its SDPA trains 0.2-0.9x as fast), SDPA on CUDA."""
    return compiled(hf_model(config, "sdpa" if DEVICE.type == "cuda" else "eager"))


CONTENDERS: dict[str, Callable[[ModelConfig], torch.nn.Module]] = {
    "vitlab": vitlab_model,
    "vitlab-compiled": vitlab_compiled,
    "hf-eager": lambda c: hf_model(c, "eager"),
    "hf-sdpa": lambda c: hf_model(c, "sdpa"),
    "hf-compiled": hf_compiled,
}
COMPILED_CONTENDERS = ("vitlab-compiled", "hf-compiled")


def peer_of(contender: str, step_images_per_second: dict[str, float]) -> str | None:
    """The Hugging Face contender a contender's ratio is taken against, given each contender's training
    speed in a round: like against like. A compiled contender is compared with Hugging Face compiled
    (the issue's "fastest setting" of a peer that compiles too); the others with the faster of Hugging
    Face's attention settings, run eagerly, as issue #4 defines the ratio. None when that peer is missing."""
    if contender in COMPILED_CONTENDERS:
        return "hf-compiled" if "hf-compiled" in step_images_per_second else None
    eager_settings = [c for c in step_images_per_second if c.startswith("hf") and c not in COMPILED_CONTENDERS]
    return max(eager_settings, key=step_images_per_second.__getitem__) if eager_settings else None


def exported_onnx(model: torch.nn.Module) -> OnnxClassifier:
    """The model through `vitlab export --format onnx`'s code and `vitlab predict model.onnx`'s runner
    (onnxruntime, fp32, its default of one thread per core): inference only."""
    with tempfile.TemporaryDirectory(prefix="vitlab-speed-") as folder:  # the session keeps the graph
        path = Path(folder) / "model.onnx"
        export_onnx(copy.deepcopy(model), {}, path)
        return OnnxClassifier(path)


def inference_fn(logits: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, dtype) -> Callable[[], None]:
    """One inference call on `images`, under autocast when `dtype` is given (fp32 otherwise)."""
    if dtype is None:
        return lambda: logits(images)

    def call() -> None:
        with torch.autocast(DEVICE.type, dtype=dtype):
            logits(images)

    return call


def time_inference(runners: dict, images: torch.Tensor, batched_dtype, single_dtype, figures: dict) -> None:
    """The runners' calls taken in turn (alternating_steps), each kind after one warm-up call of each
    runner: 3 batched calls (images/s from their median), then the first image alone: 5 turns of 10
    consecutive calls per runner (latencies), then, with more than one runner, 50 calls one each in turn
    (latencies in turn; a runner alone has no other calls between its own)."""
    batched = {c: inference_fn(logits, images, batched_dtype) for c, logits in runners.items()}
    single = {c: inference_fn(logits, images[:1], single_dtype) for c, logits in runners.items()}
    for fn in batched.values():
        fn()
    for c, seconds in alternating_steps(batched, 3).items():
        figures[c]["batch256"].append(len(images) / statistics.median(seconds))
    for fn in single.values():  # warmed after the batched calls, which leave other memory behind
        fn()
    # A model answering single images serves them one after another. Another model's call between two of
    # its calls evicts its weights and code from the caches: on the AMD EPYC this made vitlab's MNIST
    # model 1.13x slower (quartiles 1.10-1.17 over 16 paired blocks), so the latency is taken from runs of
    # consecutive calls, the runs still in turn; the call-by-call figure is kept beside it.
    for c, seconds in alternating_steps(single, 5, calls_per_turn=10).items():
        figures[c]["latency"].extend(seconds)
    if len(single) > 1:
        for c, seconds in alternating_steps(single, 50).items():
            figures[c]["latency_in_turn"].extend(seconds)


def inference_figures() -> dict[str, list[float]]:
    """Empty lists for one runner's figures from time_inference."""
    return {"batch256": [], "latency": [], "latency_in_turn": []}


def inference_summary(figures: dict) -> dict:
    latencies = sorted(figures["latency"])
    summary = {
        "infer_throughput": Measure(figures["batch256"]).summary(),
        "latency_ms": {
            "median": 1000 * statistics.median(latencies),
            "p99": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        },
    }
    if figures["latency_in_turn"]:
        summary["latency_in_turn_ms"] = {"median": 1000 * statistics.median(figures["latency_in_turn"])}
    return summary


@dataclass
class Measure:
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """Half the range between the smallest and largest sample, as a fraction of the median."""
        return (max(self.samples) - min(self.samples)) / 2 / self.median if self.samples else 0.0

    def summary(self) -> dict[str, float]:
        """Median and spread, for the results file."""
        return {"median": self.median, "spread": self.spread}


def train_step_fn(
    model: torch.nn.Module, config: ModelConfig, batch: int, with_data: bool, dtype
) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as vitlab's Trainer, for every contender
    model.train()
    # A pool of uint8 images four batches deep: big enough to index randomly, small enough that the
    # peak memory measured is the model's, not the pool's.
    pool = 4 * batch
    shape = (config.in_channels, config.img_size, config.img_size)
    images_u8 = torch.randint(0, 255, (pool, *shape), dtype=torch.uint8, device=DEVICE)
    labels_all = torch.randint(0, config.num_classes, (pool,), device=DEVICE)
    ready = torch.randn(batch, *shape, device=DEVICE)
    ready_labels = labels_all[:batch]
    mean, std = [0.5] * config.in_channels, [0.25] * config.in_channels

    def step() -> None:
        if with_data:
            index = torch.randint(0, pool, (batch,), device=DEVICE)
            images = images_u8[index].float().div_(255.0)
            images = random_affine(images, degrees=10, scale=(0.9, 1.1), translate=0.1)
            inputs, labels = to_model_input(images, mean, std, config.img_size, config.in_channels), labels_all[index]
        else:
            inputs, labels = ready, ready_labels
        with torch.autocast(DEVICE.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model.logits(inputs).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


MATRIX_PRODUCTS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
    torch.ops.aten.mv.default,
    torch.ops.aten.addmv.default,
}


@dataclass(frozen=True)
class TensorLayout:
    shape: torch.Size
    stride: tuple[int, ...]
    dtype: torch.dtype

    def tensor(self) -> torch.Tensor:
        """Random values in this layout (a transposed view stays a transposed view)."""
        extent = 1 + sum((size - 1) * step for size, step in zip(self.shape, self.stride))
        return torch.randn(extent, device=DEVICE).to(self.dtype).as_strided(self.shape, self.stride)


class RecordedProduct(NamedTuple):
    """One matrix product a step called: the op, each tensor argument's layout (other arguments as
    they are) and its keyword arguments."""

    func: Callable
    layout: tuple
    kwargs: dict

    def factors(self) -> tuple[torch.Size, torch.Size]:
        """The shapes of the two matrices (or matrix and vector) multiplied: the last two tensor
        arguments, after addmm's and the like's added term."""
        *_, left, right = (a.shape for a in self.layout if isinstance(a, TensorLayout))
        return left, right

    @property
    def flops(self) -> int:
        """2 x its multiply-accumulates (the added term aside)."""
        left, right = self.factors()
        return 2 * left.numel() * (right[-1] if len(right) > 1 else 1)

    @property
    def kind(self) -> str:
        """Which part of a training step it is: attention (the batched products), a weight gradient
        (the only products that sum over more than they output: every token of the batch), or the
        rest (forward, input gradients, the folded norms' vector products)."""
        if self.func in (torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default):
            return "attention"
        left, right = self.factors()
        if len(right) == 2 and left[-1] > max(left[0], right[-1]):
            return "weight gradients"
        return "forward and input gradients"


class ProductRecorder(TorchDispatchMode):
    """Notes every matrix product the code under it calls (RecordedProduct)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[RecordedProduct] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MATRIX_PRODUCTS:
            layout = tuple(
                TensorLayout(a.shape, a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a for a in args
            )
            self.calls.append(RecordedProduct(func, layout, kwargs))
        return func(*args, **kwargs)


@dataclass
class ProductReplay:
    """The matrix products of one training step, to call without the rest of it: all of them, or one kind."""

    run: Callable[[], None]
    flops: int
    kinds: dict[str, tuple[Callable[[], None], int]]  # kind: (its products alone, their FLOPs)


def products_only_fn(step: Callable[[], None]) -> ProductReplay:
    """The matrix products that one training `step` calls, replayed in order, without the rest of the step.

    Arguments are random tensors in the recorded layouts, one per distinct layout (the replay holds
    no activations, only what the largest products read)."""
    recorder = ProductRecorder()
    with recorder:
        step()
    tensors: dict[TensorLayout, torch.Tensor] = {}

    def argument(a):
        if not isinstance(a, TensorLayout):
            return a
        if a not in tensors:
            tensors[a] = a.tensor()
        return tensors[a]

    def replay(calls: list[RecordedProduct]) -> tuple[Callable[[], None], int]:
        ready = [(call.func, [argument(a) for a in call.layout], call.kwargs) for call in calls]

        def products() -> None:
            for func, args, kwargs in ready:
                func(*args, **kwargs)

        return products, sum(call.flops for call in calls)

    kinds: dict[str, list[RecordedProduct]] = {}
    for call in recorder.calls:
        kinds.setdefault(call.kind, []).append(call)
    return ProductReplay(*replay(recorder.calls), {kind: replay(calls) for kind, calls in kinds.items()})


def synchronize() -> None:
    """Wait for queued GPU work, so wall-clock timers measure it (no-op on CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], None], repeats: int) -> float:
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize()
    return (time.perf_counter() - start) / repeats


def alternating_steps(fns: dict, turns: int, calls_per_turn: int = 1) -> dict:
    """Seconds of each function's calls (training steps, inference calls), taken in turn and in reversed
    order every other turn, so that every call has a partner from each other function timed next to it;
    each turn is `calls_per_turn` consecutive calls of one function."""
    times: dict = {c: [] for c in fns}
    for i in range(turns):
        for c in fns if i % 2 == 0 else reversed(fns):
            times[c].extend(timed(fns[c], 1) for _ in range(calls_per_turn))
    return times


def alternating_turn_medians(fns: dict, turns: int, calls_per_turn: int = 1) -> dict:
    """alternating_steps' calls reduced to the median of each turn's: one figure per function and turn, for
    ratios paired turn by turn (this machine's speed drifts between turns; one turn's calls run close together)."""
    times = alternating_steps(fns, turns, calls_per_turn)
    return {
        c: [statistics.median(seconds[t * calls_per_turn : (t + 1) * calls_per_turn]) for t in range(turns)]
        for c, seconds in times.items()
    }


def peak_product_fn(dtype: torch.dtype, size: int | None = None) -> tuple[Callable[[], None], int]:
    """One large square matrix product (warmed up), and its FLOPs: the machine's practical limit."""
    size = size or (8192 if DEVICE.type == "cuda" else 2048)
    a, b = (torch.randn(size, size, dtype=dtype, device=DEVICE) for _ in range(2))
    for _ in range(2):
        a @ b
    return lambda: a @ b, 2 * size**3


def matmul_peak(dtype: torch.dtype, repeats: int = 10, size: int | None = None) -> float:
    """GFLOP/s of a large square matrix product."""
    product, flops = peak_product_fn(dtype, size)
    return flops / timed(product, repeats) / 1e9


def emulated_bf16_peak_size() -> int | None:
    """A smaller bf16 product for a CPU without bf16 units, which emulates them some 60x slower than
    fp32 (a 2048^3 one would take a minute there); None where bf16 is native."""
    return 1024 if DEVICE.type == "cpu" and DTYPE is None else None


def cuda_peak_memory_mb(model: torch.nn.Module, config: ModelConfig, batch: int, steps: int) -> float:
    """High-water mark of the CUDA allocator over `steps` training steps (beyond what was held before)."""
    step = train_step_fn(model, config, batch, True, DTYPE)
    synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        step()
    synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def peak_memory_mb(contender: str, config_name: str, steps: int) -> float:
    """Peak RSS of a fresh process running `steps` training steps of one contender.

    Read from VmHWM, the high-water mark of the process's own memory map: getrusage's ru_maxrss
    would carry over the parent's resident size from the fork.
    """
    code = (
        "import sys, torch; sys.path.insert(0, 'benchmarks'); import speed; speed.reuse_freed_memory(every_size=True); "
        f"torch.set_num_threads({torch.get_num_threads()}); "
        f"cfg, batch = speed.CONFIGS[{config_name!r}]; model = speed.CONTENDERS[{contender!r}](cfg); "
        "step = speed.train_step_fn(model, cfg, batch, True, speed.DTYPE); "
        f"[step() for _ in range({steps})]; "
        "import common; print(common.peak_rss_mb())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


DTYPE = autocast_dtype("auto", DEVICE)


def peak_dtype() -> torch.dtype:
    """The dtype whose matrix-product peak MFU is measured against: the one training computes in
    (bf16 where the device has bf16 units, fp32 on a CPU without them)."""
    return DTYPE or torch.float32


def bench_config(name: str, rounds: int, steps: int) -> dict:
    config, batch = CONFIGS[name]
    # Compiled graphs are cached per code object (ViT.forward), across configurations: start afresh,
    # so the compiled row never falls back to eager for want of cache room.
    torch._dynamo.reset()
    models = {c: make(config) for c, make in CONTENDERS.items()}
    result: dict = {
        "config": name,
        "batch": batch,
        "infer_batch": INFER_BATCH,
        "forward_gflops": forward_flops(config) / 1e9,
        "contenders": {},
    }
    train = {c: {"model only": [], "with data": []} for c in models}
    infer = {c: inference_figures() for c in models}
    fns = {
        c: {
            "model only": train_step_fn(m, config, batch, False, DTYPE),
            "with data": train_step_fn(m, config, batch, True, DTYPE),
        }
        for c, m in models.items()
    }
    for c in list(models):  # warm-up (and compilation): a contender that fails is reported and left out
        try:
            for fn in fns[c].values():
                timed(fn, 2)
        except Exception as error:  # noqa: BLE001 - any failure of a contender is a result to report
            reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"
            print(f"{name}: {c} left out: {reason}", flush=True)
            result.setdefault("left_out", {})[c] = reason
            del models[c], fns[c]
    # On CPU, vitlab's ONNX export run by onnxruntime joins the inference rounds (it cannot train).
    exported = None
    if DEVICE.type == "cpu" and "vitlab" in models:
        exported = exported_onnx(models["vitlab"])
        infer["vitlab-onnx"] = inference_figures()
    cuda = DEVICE.type == "cuda"
    # The peak product and vitlab's matrix products alone join the alternation, so that every step
    # has a peak measured next to it (MFU) and every products replay a vitlab step (their share).
    peak_product, peak_flops = peak_product_fn(peak_dtype())
    replay = products_only_fn(fns["vitlab"]["model only"]) if "vitlab" in models else None
    products_share: list[float] = []
    products_mfu: list[float] = []
    kind_seconds: dict[str, list[float]] = {kind: [] for kind in (replay.kinds if replay else {})}
    kind_mfu: dict[str, list[float]] = {kind: [] for kind in kind_seconds}
    step_times: list[dict[str, list[float]]] = []  # per round: each contender's model-only steps
    peak_rates: list[list[float]] = []  # per round: FLOP/s of each peak product
    for _ in range(rounds):  # interleave contenders in every round, and the machine's limit with them
        big = torch.randn(INFER_BATCH, config.in_channels, config.img_size, config.img_size, device=DEVICE)
        # Both kinds of step of every contender in one alternation: the data cost pairs its steps too.
        alternation = {(c, kind): fn for c in models for kind, fn in fns[c].items()}
        alternation[("machine", "peak")] = peak_product
        if replay is not None:
            alternation[("vitlab", "products")] = replay.run
        times = alternating_steps(alternation, steps)
        peak_rates.append([peak_flops / seconds for seconds in times.pop(("machine", "peak"))])
        if replay is not None:
            product_seconds, vitlab_seconds = times.pop(("vitlab", "products")), times[("vitlab", "model only")]
            products_share.append(statistics.median(p / s for p, s in zip(product_seconds, vitlab_seconds)))
            products_mfu.append(
                statistics.median(replay.flops / p / r for p, r in zip(product_seconds, peak_rates[-1]))
            )
            # Each kind of product alone, after the alternation, each replay beside a peak product: which
            # of them set the ceiling.
            for kind, (fn, flops) in replay.kinds.items():
                pairs = [(timed(fn, 1), timed(peak_product, 1)) for _ in range(steps)]
                kind_seconds[kind].append(statistics.median(seconds for seconds, _ in pairs))
                kind_mfu[kind].append(
                    statistics.median(flops * peak / (seconds * peak_flops) for seconds, peak in pairs)
                )
        for (c, kind), seconds in times.items():
            train[c][kind].append(batch / statistics.median(seconds))
        step_times.append({c: times[(c, "model only")] for c in models})
        # Inference, the models' calls taken in turn like their training steps: batched under the training
        # dtype, batch-1 latency in fp32 on CPU (bf16 kernels are slower on such tiny shapes there), bf16 on
        # CUDA. The exported graph's runner takes its calls on its own, after them: onnxruntime's threads
        # spin on after each call, and a PyTorch call taken right after one lost 4-5 ms to them.
        for m in models.values():
            m.eval()
        with torch.inference_mode():
            time_inference({c: m.logits for c, m in models.items()}, big, DTYPE, DTYPE if cuda else None, infer)
        for m in models.values():
            m.train()
        if exported is not None:
            time_inference({"vitlab-onnx": exported.logits}, big, None, None, infer)
    # The ratio pairs each step with its Hugging Face peer's step taken next to it (peer_of), and MFU
    # each step with the peak product taken next to it (this machine's speed drifts within seconds):
    # medians within a round, then over rounds.
    round_speeds = [{c: train[c]["model only"][r] for c in models} for r in range(rounds)]
    for c in models:
        samples = train[c]["model only"]
        peers = [peer_of(c, speeds) for speeds in round_speeds]
        ratios = [statistics.median(b / a for a, b in zip(t[c], t[h])) for t, h in zip(step_times, peers) if h]
        result["contenders"][c] = {
            "train_model_only": Measure(samples).summary(),
            "train_with_data": Measure(train[c]["with data"]).summary(),
            **inference_summary(infer[c]),
            "ratio_vs_peer": Measure(ratios).summary() if ratios else None,
            "mfu": Measure(
                [
                    statistics.median(training_flops(config) * batch / s / r for s, r in zip(t[c], rates))
                    for t, rates in zip(step_times, peak_rates)
                ]
            ).summary(),
        }
    if exported is not None:
        result["exported"] = {"vitlab-onnx": inference_summary(infer["vitlab-onnx"])}
    result["peak_gflops"] = Measure([statistics.median(rates) / 1e9 for rates in peak_rates]).summary()
    if replay is not None:
        round_seconds = [sum(kinds) for kinds in zip(*kind_seconds.values())]  # all kinds' replays in each round
        result["matrix_products"] = {
            "gflops_per_step": replay.flops / 1e9,
            "analytic_gflops_per_step": training_flops(config) * batch / 1e9,
            "share_of_step": Measure(products_share).summary(),
            "mfu_if_alone": Measure(products_mfu).summary(),
            "kinds": {
                kind: {
                    "gflops_per_step": replay.kinds[kind][1] / 1e9,
                    "share_of_products": Measure([t / total for t, total in zip(seconds, round_seconds)]).summary(),
                    "mfu_if_alone": Measure(kind_mfu[kind]).summary(),
                }
                for kind, seconds in kind_seconds.items()
            },
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="mnist,w192,s16")
    parser.add_argument("--quick", action="store_true", help="one round, two steps: a smoke run")
    parser.add_argument("--no-memory", action="store_true", help="skip peak memory (a subprocess per contender)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--rounds", type=int, help="rounds per configuration instead of REPEATS' (a longer run: tighter medians)"
    )
    parser.add_argument("--out", help="results file name (default speed.md, speed_cuda.md on CUDA)")
    args = parser.parse_args()
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    use_device(args.device)
    reuse_freed_memory(every_size=True)  # as every vitlab command; the Hugging Face rows share the process and it
    emulated_size = emulated_bf16_peak_size()
    peaks = {
        "fp32": matmul_peak(torch.float32),
        "bf16": matmul_peak(torch.bfloat16, repeats=1 if emulated_size else 10, size=emulated_size),
    }
    print(f"matrix-product peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s", flush=True)
    results = []
    for name in args.configs.split(","):
        rounds, steps = (1, 2) if args.quick else REPEATS[name]
        rounds = args.rounds or rounds
        res = bench_config(name, rounds, steps)
        if not args.no_memory:
            for c in res["contenders"]:
                if DEVICE.type == "cuda":
                    model = CONTENDERS[c](CONFIGS[name][0])
                    res["contenders"][c]["peak_memory_mb"] = cuda_peak_memory_mb(model, *CONFIGS[name], steps=3)
                    del model
                else:
                    res["contenders"][c]["peak_memory_mb"] = peak_memory_mb(c, name, steps=5)
        results.append(res)
        print(json.dumps(res, indent=1)[:2000], flush=True)
    write_report(results, peaks, args)
    return 0


def step_setup(speed_batch_sizes: bool = True) -> str:
    """How the training-step benchmarks built on this module (step_costs.py, step_breakdown.py,
    step_ablation.py) take a step, for their results files: as train_step_fn does, at CONFIGS' batch sizes
    unless the benchmark sets its own."""
    batches = ", speed.py's batch sizes" if speed_batch_sizes else ""
    return (
        f"Training step as in speed.py (autocast {DTYPE}, fused AdamW, a ready batch{batches}; "
        "freed memory kept for reuse as vitlab's commands do)"
    )


def cpu_step_benchmark_main(
    description: str,
    default_configs: str,
    repeats: dict[str, tuple[int, int]],
    bench_config: Callable[[str, int, int], dict],
    write_report: Callable[[list[dict], bool], None],
) -> int:
    """The command line of the CPU training-step benchmarks built on this module (step_costs.py,
    step_breakdown.py, step_ablation.py): --configs, among `repeats`' keys, and --quick (one round of one step, recording
    nothing); each configuration measured by bench_config(name, rounds, steps), then the report written."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--configs", default=default_configs)
    parser.add_argument("--quick", action="store_true", help="one round of one step: a smoke run that records nothing")
    args = parser.parse_args()
    use_device("cpu")
    reuse_freed_memory(every_size=True)  # as every vitlab command (and this module, for every contender)
    results = []
    for name in args.configs.split(","):
        if name not in repeats:
            parser.error(f"unknown configuration {name!r}; choose from {', '.join(repeats)}")
        rounds, steps = (1, 1) if args.quick else repeats[name]
        results.append(bench_config(name, rounds, steps))
    write_report(results, args.quick)
    return 0


def rate(images_per_second: float) -> str:
    """Images/s for a table: whole numbers, with a decimal below 100 (ViT-S/16 trains at 5-12 img/s on CPU)."""
    return f"{images_per_second:,.0f}" if images_per_second >= 100 else f"{images_per_second:.1f}"


def write_report(results: list[dict], peaks: dict[str, float], args: argparse.Namespace) -> None:
    cuda = DEVICE.type == "cuda"
    size = 8192 if cuda else 2048
    if cuda:
        precision = f"Training, batched inference and batch-1 latency under {DTYPE} autocast"
    elif DTYPE is None:
        precision = "Everything in fp32: this CPU has no bf16 units (vitlab's `auto` precision picks fp32 here)"
    else:
        precision = f"Training and batched inference under {DTYPE} autocast; batch-1 latency in fp32 (faster than bf16 at that size here)"
    bf16_size = emulated_bf16_peak_size() or size
    peak_name = "bf16" if peak_dtype() is torch.bfloat16 else "fp32"
    memory = "peak CUDA memory (MB)" if cuda else "peak RSS (MB)"
    lines = [
        *report_head(
            f"Speed on {'CUDA' if cuda else 'CPU'}: vitlab against Hugging Face ViT, and against the machine",
            "speed.py",
            gpu=cuda,
        ),
        f"- {precision}; matrix-product peak at the start: fp32 {peaks['fp32']:,.0f} GFLOP/s ({size}^3), bf16 {peaks['bf16']:,.0f} GFLOP/s ({bf16_size}^3)",
        "- Contenders train in turn, one step each, model-only and with-data steps alike (order reversed every other step). The ratio pairs each step with the step of its Hugging Face peer taken next to it, like with like: for the eager rows the faster of Hugging Face's two attention settings (issue #4's ratio), for the compiled rows hf-compiled; MFU pairs each step with a "
        + peak_name
        + f" {size}^3 product taken in the same alternation (this machine's speed drifts within seconds); medians within a round, then over rounds. Inference alternates the same way: 3 batched calls per round, one each in turn; batch-1 latency from 5 turns of 10 consecutive single-image calls per round (a model serving single images answers them one after another), and beside it the median of 50 calls taken one each in turn, where the other models' calls between its own evict its weights and code from the caches. Peaks in these rounds: "
        + ", ".join(
            f"{res['config']} {res['peak_gflops']['median']:,.0f} ±{res['peak_gflops']['spread']:.0%}"
            for res in results
        )
        + " GFLOP/s.",
        "- FLOPs per image are analytic (`vitlab.models.flops`): 2 x the multiply-accumulates of every matrix product the logits need; training = 3 x forward. With class-token pooling the last block's output is needed for the class token alone, which is all vitlab computes there; Hugging Face computes it for every token (21% more on the MNIST model, 8% on w192, 7% on ViT-S/16), work not counted in its MFU.",
        "- Every contender trains with fused AdamW (as vitlab's Trainer); the process keeps freed memory of every size for reuse as every vitlab command does (`runtime.reuse_freed_memory(every_size=True)`), so the Hugging Face rows have it too (its own effect: cpu_choices.md).",
        "- vitlab-compiled: the same model through torch.compile"
        + (
            " in mode reduce-overhead (CUDA graphs); `train.compile: true` compiles in the default mode, without them."
            if cuda
            else ", as `train.compile: true` runs it (inductor's C++ kernels; compile time not counted)."
        )
        + f" hf-compiled: Hugging Face's model with {'SDPA' if cuda else 'eager attention'} through the same torch.compile call.",
        "",
        f"| config | contender | train img/s (model only) | train img/s (with data) | data cost | ratio vs HF peer | MFU ({peak_name} peak) | infer img/s (batch) | latency b=1 median / p99 (ms) | b=1 in turn (ms) | {memory} |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for res in results:
        for c, v in res["contenders"].items():
            tm, td = v["train_model_only"], v["train_with_data"]
            data_cost = 1 - td["median"] / tm["median"]
            ratio = v["ratio_vs_peer"]
            ratio_text = f"{ratio['median']:.2f}x ±{ratio['spread']:.0%}" if ratio else "n/a"
            in_turn = f"{v['latency_in_turn_ms']['median']:.2f}" if "latency_in_turn_ms" in v else "n/a"
            memory_text = f"{v['peak_memory_mb']:,.0f}" if "peak_memory_mb" in v else "not measured (--no-memory)"
            lines.append(
                f"| {res['config']} (batch {res['batch']}) | {c} | {rate(tm['median'])} ±{tm['spread']:.0%} | {rate(td['median'])} ±{td['spread']:.0%} "
                f"| {data_cost:.0%} | {ratio_text} | {v['mfu']['median']:.0%} | {rate(v['infer_throughput']['median'])} ({res['infer_batch']}) "
                f"| {v['latency_ms']['median']:.2f} / {v['latency_ms']['p99']:.2f} | {in_turn} "
                f"| {memory_text} |"
            )
    exported_rows = [(res, runner, figures) for res in results for runner, figures in res.get("exported", {}).items()]
    if exported_rows:
        lines += [
            "",
            "Inference through the exported graph: `vitlab export --format onnx` run by onnxruntime (fp32,",
            "what `vitlab predict model.onnx` uses), measured in the same rounds as the rows above, after the",
            "models' calls and not between them: onnxruntime's threads spin on after each call, and a PyTorch",
            "call taken right after one lost 4-5 ms to them. Its latency comes from consecutive calls, as the",
            "models' latency above.",
            "",
            "| config | runner | infer img/s (batch) | latency b=1 median / p99 (ms) | vs vitlab eager: throughput, latency |",
            "| --- | --- | --- | --- | --- |",
        ]
        for res, runner, v in exported_rows:
            eager = res["contenders"]["vitlab"]
            speedup = v["infer_throughput"]["median"] / eager["infer_throughput"]["median"]
            lower = eager["latency_ms"]["median"] / v["latency_ms"]["median"]
            lines.append(
                f"| {res['config']} | {runner} | {rate(v['infer_throughput']['median'])} ±{v['infer_throughput']['spread']:.0%} "
                f"({res['infer_batch']}) | {v['latency_ms']['median']:.2f} / {v['latency_ms']['p99']:.2f} "
                f"| {speedup:.2f}x, {lower:.2f}x faster |"
            )
    product_rows = [res for res in results if "matrix_products" in res]
    if product_rows:
        lines += [
            "",
            "vitlab's matrix products alone: every product its training step calls (recorded through the",
            "dispatcher: the same shapes, layouts and dtypes; forward, and backward for inputs and weights),",
            "replayed without the rest of the step and timed in the same alternation, each paired with the",
            "vitlab step next to it. Their share is the part of a step the products take. 'MFU if alone' is",
            f"their FLOP/s over that of the {peak_name} peak product taken next to them: the MFU a step would",
            "reach if norms, activations, softmax, copies and the optimizer took no time, the ceiling that the",
            "matrix-product kernels set at these shapes.",
            "",
            "| config | products' GFLOP per step (analytic) | share of vitlab's step | MFU if alone | vitlab's MFU |",
            "| --- | --- | --- | --- | --- |",
        ]
        for res in product_rows:
            v, mfu = res["matrix_products"], res["contenders"]["vitlab"]["mfu"]
            lines.append(
                f"| {res['config']} | {v['gflops_per_step']:,.1f} ({v['analytic_gflops_per_step']:,.1f}) "
                f"| {v['share_of_step']['median']:.0%} ±{v['share_of_step']['spread']:.0%} "
                f"| {v['mfu_if_alone']['median']:.0%} ±{v['mfu_if_alone']['spread']:.0%} | {mfu['median']:.0%} |"
            )
        lines += [
            "",
            "Each kind of product replayed alone after each round's alternation: attention's batched",
            "products; the weight gradients, the only products that sum over more than they output (every",
            "token of the batch); and the rest (forward, input gradients). The share is of the kinds' summed",
            f"time; 'MFU if alone' pairs each replay with a {peak_name} peak product timed right after it.",
            "",
            "| config | products | GFLOP per step | share of the products' time | MFU if alone |",
            "| --- | --- | --- | --- | --- |",
        ]
        for res in product_rows:
            for kind, v in res["matrix_products"]["kinds"].items():
                lines.append(
                    f"| {res['config']} | {kind} | {v['gflops_per_step']:,.1f} "
                    f"| {v['share_of_products']['median']:.0%} ±{v['share_of_products']['spread']:.0%} "
                    f"| {v['mfu_if_alone']['median']:.0%} ±{v['mfu_if_alone']['spread']:.0%} |"
                )
    for res in results:
        for c, reason in res.get("left_out", {}).items():
            lines.append(f"\n{res['config']}: {c} left out, it failed: `{reason}`")
    record(args.out or ("speed_cuda.md" if cuda else "speed.md"), "\n".join(lines), smoke_run=args.quick)


if __name__ == "__main__":
    sys.exit(main())
