"""A training process for the two-process test: joins the gloo group, trains, saves its own weights."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from safetensors.torch import save_file


def join_gloo_group(rank: int, world_size: int, port: int):
    """Describe this process as torchrun would (RANK, WORLD_SIZE, ...) and join the gloo group."""
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    from vitlab.engine.distributed import init_process_group, world_from_environment

    world = world_from_environment()
    init_process_group(world, "cpu")
    return world


def run(rank: int, world_size: int, port: int, run_dir: str, overrides: list[str]) -> None:
    from vitlab.engine.distributed import barrier, end_process, shutdown
    from vitlab.engine.train import Trainer, prepare_run_dir
    from vitlab.recipes import resolve_run_config

    config = resolve_run_config(preset="mnist-tiny", epochs=2, seed=3, overrides=overrides)
    world = join_gloo_group(rank, world_size, port)
    if world.is_main:
        prepare_run_dir(config, Path(run_dir))
    barrier(world)
    trainer = Trainer(config, Path(run_dir))
    trainer.run()
    save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()}, f"{run_dir}/rank{rank}.safetensors")
    shutdown(world)
    end_process(world)


if __name__ == "__main__":
    rank, world_size, port, run_dir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    run(rank, world_size, port, run_dir, sys.argv[5:])
