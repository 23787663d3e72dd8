#!/bin/bash
# Recipe sweep 2 on the GPU (models spelled out: the shipped recipes have since become S and U): conv stem vs patch embedding, epochs = what 2 CPU cores here fit in 30 minutes.
cd "$(dirname "$0")/../.."  # repo root; data copied beforehand into .gpudata/ (fashion-mnist/, cifar10-jpeg.tar.gz)
export PYTHONPATH=src PYTHONUNBUFFERED=1 VITLAB_CACHE=/tmp/vcache
mkdir -p /tmp/cifar /tmp/runs && tar -xzf .gpudata/cifar10-jpeg.tar.gz -C /tmp/cifar
D=$(dirname $(find /tmp/cifar -maxdepth 3 -type d -name train | head -1))
echo "cifar at $D"
python3 -m vitlab train --dataset $D --model cifar-tiny --time-budget 1s --quiet --no-report --out /tmp/runs/warm > /tmp/runs/warm.log 2>&1; tail -2 /tmp/runs/warm.log
F="--recipe fashion-mnist data.data_dir=.gpudata/fashion-mnist"
C="train.threads=2 train.ema_decay=0.999 train.eval_every=2 --quiet --no-report"
run() { name=$1; shift; timeout ${LIMIT:-450} python3 -m vitlab train --out /tmp/runs/$name "$@" $C > /tmp/runs/$name.log 2>&1 & }
run P --recipe cifar10 --dataset $D model.stem=patch model.patch_size=4 model.embed_dim=96 model.num_heads=3 model.depth=6 --epochs 21
run Q --recipe cifar10 --dataset $D model.stem=conv model.patch_size=4 model.embed_dim=96 model.num_heads=3 model.depth=6 --epochs 18
run R --recipe cifar10 --dataset $D model.stem=conv model.patch_size=4 model.embed_dim=64 model.depth=4 model.num_heads=4 --epochs 46
run S --recipe cifar10 --dataset $D model.stem=conv model.patch_size=8 model.embed_dim=128 model.num_heads=4 model.depth=6 --epochs 50
run T --recipe cifar10 --dataset $D model.stem=conv model.patch_size=4 model.embed_dim=128 model.depth=4 model.num_heads=4 --epochs 27
run U $F model.stem=conv --epochs 38
run V $F model.stem=patch --epochs 38
run W $F --model mnist-base model.stem=conv --epochs 17
wait
python3 benchmarks/recipe_search/summarize.py
