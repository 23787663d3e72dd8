#!/bin/bash
# Recipe sweep on the GPU: each variant trains the number of epochs the 2-core CPU fits in its budget.
cd "$(dirname "$0")/../.."  # repo root; data copied beforehand into .gpudata/ (fashion-mnist/, cifar10-jpeg.tar.gz)
export PYTHONPATH=src PYTHONUNBUFFERED=1
F="data.data_dir=.gpudata/fashion-mnist model.stem=patch"  # the recipe of the time had no conv stem
C="train.threads=2 train.ema_decay=0.999 --quiet --no-report"
run() { name=$1; shift; timeout ${LIMIT:-500} python3 -m vitlab train --out /tmp/runs/$name "$@" $C > /tmp/runs/$name.log 2>&1 & }
mkdir -p /tmp/runs
run A --recipe mnist --model mnist-small --epochs 80
run B --recipe mnist --model mnist-small model.embed_dim=96 --epochs 52 train.lr=0.003
run C --recipe mnist --model mnist-base --epochs 40 train.lr=0.003
run D --recipe mnist --model mnist-small --epochs 80 model.drop_path=0.1
run E --recipe fashion-mnist $F --epochs 40
run F --recipe fashion-mnist $F model.embed_dim=96 --epochs 26
run G --recipe fashion-mnist $F --model mnist-tiny --epochs 110
run H --recipe fashion-mnist $F --epochs 40 model.drop_path=0.1
wait
python3 benchmarks/recipe_search/summarize.py
