"""Training images/s of the candidate models on one CPU thread (run from the repo root, pinned:
`taskset -c 0 python benchmarks/recipe_search/cpu_throughput.py`), to turn "30 minutes on two
cores here" into a number of epochs for the GPU sweeps."""

import sys

import torch

sys.path.insert(0, "benchmarks")
import speed  # noqa: E402
from vitlab.models.registry import model_config  # noqa: E402

CANDIDATES = {
    "cifar-tiny": model_config("cifar-tiny"),
    "cifar-tiny-conv": model_config("cifar-tiny", stem="conv"),
    "c-conv-p8-w128-d6": model_config("cifar-tiny", stem="conv", patch_size=8, embed_dim=128, num_heads=4),
    "c-conv-p4-w64-d4": model_config("cifar-tiny", stem="conv", embed_dim=64, depth=4, num_heads=4),
    "c-conv-p4-w128-d4": model_config("cifar-tiny", stem="conv", embed_dim=128, depth=4, num_heads=4),
    "mnist-small": model_config("mnist-small"),
    "mnist-small-conv": model_config("mnist-small", stem="conv"),
    "mnist-base-conv": model_config("mnist-base", stem="conv"),
    "mnist-tiny": model_config("mnist-tiny"),
}

if __name__ == "__main__":
    torch.set_num_threads(1)
    for name, config in CANDIDATES.items():
        model = speed.vitlab_model(config)
        step = speed.train_step_fn(model, config, 128, True, speed.DTYPE)
        speed.timed(step, 2)
        print(name, f"{128 / speed.timed(step, 6):.0f} img/s", flush=True)
