import logging
import subprocess
import sys

import pytest
import torch

from vitlab.engine import runtime
from vitlab.engine.schedule import warmup_cosine
from vitlab.errors import ConfigError


def test_auto_device_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="train.device cuda asks for CUDA, but no CUDA device"):
        runtime.resolve_device("cuda")
    with pytest.raises(ConfigError, match="--device cuda:1 asks for CUDA"):
        runtime.resolve_device("cuda:1", "--device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device("auto").type == "cuda"
    with pytest.raises(ConfigError, match="unknown device"):
        runtime.resolve_device("abacus")


def test_precision_choice_per_device(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runtime.autocast_dtype("fp32", cpu) is None
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    assert runtime.autocast_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    assert runtime.autocast_dtype("auto", cpu) is None
    with pytest.raises(ConfigError, match="no bf16 support"):
        runtime.autocast_dtype("bf16", cpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert runtime.autocast_dtype("auto", cuda) == torch.bfloat16


def test_warmup_then_cosine_schedule():
    lrs = [warmup_cosine(step, 100, 10, 1.0, 0.0) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5)  # half-way through the decay
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert warmup_cosine(100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)


# Ends a script that defines step(): prints the minor page faults of ten steps after {warm_up} more.
COUNT_FAULTS_OF_TEN_STEPS = """
for _ in range({warm_up}):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

FAULTS_OF_TEN_STEPS = """
import resource, sys, torch
from vitlab.engine.runtime import reuse_freed_memory
from vitlab.models.registry import model_config
from vitlab.models.vit import ViT
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
torch.set_num_threads(1)
model, images = ViT(model_config("mnist-tiny")), torch.randn(64, 1, 28, 28)
def step():
    model(images).sum().backward()
""" + COUNT_FAULTS_OF_TEN_STEPS.format(warm_up=3)


FAULTS_OF_TEN_STEPS_WITH_A_LARGE_TENSOR = """
import resource, sys, torch
from vitlab.engine.runtime import reuse_freed_memory
assert reuse_freed_memory(every_size=sys.argv[1] == "every_size")
def step():
    hidden = torch.ones(12 << 20)  # 48 MB: above the largest mmap threshold glibc accepts (32 MB)
    return (hidden * 2).sum()
# Warm-up: an aligned block freed on the heap is a few bytes short of the next same-sized request, so the
# heap grows until freed blocks lie side by side and merge (3 steps left 0-20% of the faults, 10 none).
""" + COUNT_FAULTS_OF_TEN_STEPS.format(warm_up=10)


def faults_in_fresh_process(script: str, setting: str) -> int:
    # Each setting in a fresh process: malloc's thresholds are per process and move as it runs.
    out = subprocess.run([sys.executable, "-c", script, setting], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def test_reused_memory_spares_the_page_faults_of_every_step():
    default, reused = (faults_in_fresh_process(FAULTS_OF_TEN_STEPS, setting) for setting in ("default", "reuse"))
    assert default > 2_000  # the freed activations went back to the OS and fault in again
    assert reused < default / 5


def test_every_size_also_keeps_blocks_above_the_largest_mmap_threshold():
    thresholds, every_size = (
        faults_in_fresh_process(FAULTS_OF_TEN_STEPS_WITH_A_LARGE_TENSOR, setting)
        for setting in ("thresholds", "every_size")
    )
    assert thresholds > 10 * 2 * 10_000  # both 48 MB blocks of each step were mapped afresh: 12,288 pages each
    assert every_size < thresholds / 10


def test_compiling_drops_dynamos_note_on_ddps_profiler_label_and_nothing_else():
    # Under --nproc, torch.compile traces DistributedDataParallel's forward and logs, in every process,
    # that its profiler label is ignored; other warnings of that logger still show. (torch's loggers do
    # not propagate to the root logger, so the records are collected at the logger itself.)
    logger = logging.getLogger(runtime.DYNAMO_CONTEXT_LOGGER)
    runtime.compiled(torch.nn.Linear(2, 2), torch.device("cuda"))  # no C++ compiler check off the CPU
    runtime.compiled(torch.nn.Linear(2, 2), torch.device("cuda"))
    assert logger.filters.count(runtime.without_ignored_profiler_label_notes) == 1
    shown = []
    collector = logging.Handler()
    collector.emit = lambda record: shown.append(record.getMessage())
    logger.addHandler(collector)
    try:
        logger.warning("Profiler record function %s will be ignored", "<class 'record_function'>")
        logger.warning("Some other dynamo warning")
    finally:
        logger.removeHandler(collector)
    assert shown == ["Some other dynamo warning"]
