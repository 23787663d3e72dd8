"""A process for the rank-order test: joins a gloo group of two and records what it saw in the block."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def run(rank: int, port: int, folder: Path, fail: bool) -> None:
    from ddp_worker import join_gloo_group  # the sibling script: this folder is on sys.path

    from vitlab.engine.distributed import local_rank_zero_first, shutdown

    world = join_gloo_group(rank, 2, port)
    try:
        with local_rank_zero_first(world):
            if rank == 0:
                time.sleep(0.5)  # rank 1 would find no file if it did not wait
                if fail:
                    raise RuntimeError("rank 0 fails inside the block")
                (folder / "cache").write_text("decoded")
            else:
                (folder / "rank1_saw").write_text(str((folder / "cache").exists()))
    except RuntimeError:
        pass
    shutdown(world)


if __name__ == "__main__":
    run(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "fail")
