"""Several processes through PyTorch's own engine: torchrun sets the environment, DDP syncs the gradients.

Every rank draws the same global permutation of the data each epoch and takes its own slice of
each global batch, so a run with N processes sees the same batches as one process with the same
global batch size, and a run can resume with a different number of processes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vitlab.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process trains."""
        return self.size > 1


def world_from_environment() -> World:
    """The World torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (one process without them)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def check_a_gpu_each(processes: int, device_type: str) -> None:
    """Training processes on CUDA take a GPU each (NCCL will not share one): refuse more than there are."""
    if device_type != "cuda":
        return
    gpus = torch.cuda.device_count()
    if processes > gpus:
        raise ConfigError(
            f"{processes} training processes on this machine need a GPU each, and it has {gpus}; "
            f"start at most {gpus}, or set train.device=cpu to train in {processes} CPU processes"
        )


def init_process_group(world: World, device_type: str) -> None:
    """Join the process group: nccl for tensors on GPUs, gloo for those on the CPU.

    GPU processes need both: nccl takes CUDA tensors only, and the epoch's loss sums and the time
    budget's verdicts are a few numbers on the CPU (sum_across)."""
    if not world.distributed or dist.is_initialized():
        return
    if device_type == "cuda":
        check_a_gpu_each(world.local_rank + 1, device_type)  # torchrun started more processes than GPUs
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo")


@contextmanager
def local_rank_zero_first(world: World) -> Iterator[None]:
    """Let local rank 0 run the block before the other ranks do: it downloads or decodes the data
    into the cache that they then only read, instead of every process doing the same work at once.
    """
    if world.local_rank != 0:
        barrier(world)
    try:
        yield
    finally:  # on an error too: the others then meet it themselves instead of waiting forever
        if world.local_rank == 0:
            barrier(world)


def shard(indices: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's part of a global batch (every size-th index, starting at rank)."""
    return indices[world.rank :: world.size] if world.distributed else indices


def shard_range(count: int, world: World) -> slice:
    """This rank's contiguous part of `count` rows (for evaluation; parts differ in size by at most one)."""
    return slice(world.rank * count // world.size, (world.rank + 1) * count // world.size)


def gather_rows(local: torch.Tensor, count: int, world: World) -> torch.Tensor:
    """Every rank's `shard_range` rows joined in order, on every rank (`local` on the group's device)."""
    if not world.distributed:
        return local
    # all_gather wants equal shapes: pad each part to the largest, then trim.
    parts_of = [shard_range(count, World(rank, world.size)) for rank in range(world.size)]
    sizes = [part.stop - part.start for part in parts_of]
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def check_global_batch(batch_size: int, world: World, micro_batches: int = 1) -> None:
    """A global batch must split evenly over the processes, and each process's part into its micro-batches."""
    if world.distributed and batch_size % world.size:
        raise ConfigError(f"train.batch_size={batch_size} does not split evenly over {world.size} processes")
    if batch_size // world.size < micro_batches:
        raise ConfigError(
            f"train.batch_size={batch_size} over {world.size} processes gives each {batch_size // world.size} images, "
            f"fewer than train.accumulation_steps={micro_batches}"
        )


def sum_across(values: list[float], world: World) -> list[float]:
    """Element-wise sum of a few numbers over all ranks."""
    if not world.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(world: World) -> None:
    """Wait for every rank (a no-op in a single process)."""
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    """Leave the process group once every rank is done with it.

    Without the barrier a rank that finishes first (every rank but the main one, which still writes
    checkpoints) tore its group down and exited while the main rank's group was alive, and about one
    such exit in ten aborted in gloo's teardown ("terminate called without an active exception").
    """
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def end_process(world: World, status: int = 0) -> int:
    """Return `status`; in a process of a distributed run (after `shutdown`), end the process with it at once.

    Python's own teardown frees the DDP wrapper's process group while holding the GIL, and gloo's
    destructor then joins its worker threads. One of them may still be freeing a finished collective
    whose tensors Python no longer holds, and that needs the GIL: both wait forever, after the run's
    last line is out (about one `vitlab train --nproc 2` in eight on a 2-core AMD EPYC; py-spy showed
    ~ProcessGroupGloo in std::thread::join and the worker thread in gil_scoped_acquire). By now every
    file of the run is written and closed, so nothing is lost by skipping the teardown.
    """
    if world.distributed:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status
