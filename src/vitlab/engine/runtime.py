"""Where and how computation runs: device, threads, and the autocast dtype the device supports."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import shutil
from collections.abc import Iterator

import torch

from vitlab.cores import available_cores
from vitlab.errors import ConfigError


def resolve_device(name: str = "auto", setting: str = "train.device") -> torch.device:
    """'auto' picks CUDA when present, else CPU; a named device must exist. `setting` names the option in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} for {setting}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting} {name} asks for CUDA, but no CUDA device is available; use auto or cpu")
    return device


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 / AMX), where bf16 autocast pays off."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, device: torch.device, option: str = "train.precision") -> torch.dtype | None:
    """The autocast dtype for a precision setting on a device, or None for plain fp32; `option` names the
    setting in the error for bf16 where there is none."""
    if precision == "fp32":
        return None
    supported = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_supports_bf16()
    if precision == "bf16" and not supported:
        raise ConfigError(f"{option}=bf16 but this {device.type} has no bf16 support; use auto or fp32")
    return torch.bfloat16 if supported else None


def precision_name(dtype: torch.dtype | None) -> str:
    """How a run, a checkpoint or `vitlab eval` names an autocast dtype from autocast_dtype: 'bf16' or 'fp32'."""
    return "fp32" if dtype is None else "bf16"


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """An autocast context for `dtype`, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# mallopt parameters from glibc's malloc.h, and the largest mmap threshold it accepts on 64-bit.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_MAX_MMAP_THRESHOLD = 32 << 20


@functools.cache  # a per-process setting: the CLI, the Trainer and vitlab.load each ask for it
def reuse_freed_memory(every_size: bool = False) -> bool:
    """Make glibc's malloc keep freed memory for the next tensor instead of handing it back to the OS.

    A training step frees and reallocates the same activation sizes every step. By default glibc
    returns large freed blocks to the OS (munmap, heap trimming), so the next step page-faults
    them in again: on a 2-core AMD EPYC about 1,300 faults per training step of the default MNIST
    model and 3,400 per batch-256 inference, which made them 13% and 44% slower (9% and 32% on an
    Intel Xeon with AMX; benchmarks/cpu_choices.py). Raising the mmap and trim thresholds keeps
    those pages: only memory the process already used is kept, and the peak resident memory
    measured there did not change.

    Blocks from 32 MB up (the highest mmap threshold glibc accepts) are still mapped for each use
    and unmapped when freed, unless `every_size`: then malloc maps no memory of its own at all.
    ViT-S/16's MLP activations at batch 32 are 38.7 MB each: on that AMD EPYC every_size took its
    batch-32 inference from 161,000 faults to none (1.05x the throughput) and its training step
    from 45,500 faults to 8,300 (speed within the noise); the blocks of the MNIST and width-192
    models there stay under 32 MB (cpu_choices.py). vitlab's commands ask for it: the process is
    theirs. A program that imports vitlab keeps the thresholds alone, so a large array it frees
    still goes back to the OS at once.
    Returns False where the C library has no mallopt (macOS, Windows), and then nothing changes.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    kept = bool(mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return kept and (not every_size or bool(mallopt(_M_MMAP_MAX, 0)))


def configure_cpu(threads: int = 0, share_with: int = 1) -> int:
    """Use `threads` intra-op threads (0: this process's share of its cores among `share_with` processes).

    Also keeps freed memory for reuse (`reuse_freed_memory`): the other CPU setting speed depends on.
    """
    reuse_freed_memory()
    count = threads or max(1, available_cores() // share_with)
    torch.set_num_threads(count)
    return count


# torch.compile logs this of DistributedDataParallel's profiler label, once per process (`--nproc N`):
# a note about profiling inside the compiled graph that tells a user training nothing.
DYNAMO_CONTEXT_LOGGER = "torch._dynamo.variables.ctx_manager"
IGNORED_PROFILER_LABEL = "Profiler record function"


def without_ignored_profiler_label_notes(record: logging.LogRecord) -> bool:
    """A logging filter that passes every record except dynamo's note that a profiler label is ignored."""
    return not record.getMessage().startswith(IGNORED_PROFILER_LABEL)


def compiled(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module through torch.compile (inductor), which turns its element-wise work into fused kernels.

    Evaluation stays eager: another graph to compile, for a pass that is a small part of an epoch.
    """
    if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
        raise ConfigError("train.compile on CPU needs a C++ compiler (c++ or g++ on PATH); install one or leave it off")
    dynamo_context_log = logging.getLogger(DYNAMO_CONTEXT_LOGGER)
    if without_ignored_profiler_label_notes not in dynamo_context_log.filters:
        dynamo_context_log.addFilter(without_ignored_profiler_label_notes)
    return torch.compile(module)


@contextlib.contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put a model in eval mode without gradients, restoring its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)
