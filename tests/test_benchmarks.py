"""Smoke runs of the benchmark scripts whose quick mode writes no results file, so a change to the
model cannot break them unnoticed (the class-token-only last block once broke scaling.py's
stand-in attention)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_scaling_quick_measures_every_point_and_writes_nothing():
    results = BENCHMARKS / "results" / "scaling.md"
    before = results.read_bytes() if results.exists() else None
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "scaling.py"), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    # Two token points and two batch points, each a table row with its measured attention share
    # (printed as measured, then again in the report).
    rows = set(re.findall(r"^\| (\d+)x\d+ \| (\d+) \| (\d+) \| ([\d.]+) \| (\d+)% \|", run.stdout, flags=re.MULTILINE))
    assert len(rows) == 4, run.stdout
    for _, tokens, batch, ms_per_image, attention_share in rows:
        assert int(tokens) in (17, 65) and int(batch) > 0
        assert float(ms_per_image) > 0 and 0 <= int(attention_share) <= 100
    assert (results.read_bytes() if results.exists() else None) == before


def test_accumulation_quick_gives_every_micro_batch_count_the_same_gradient_and_writes_nothing():
    results = BENCHMARKS / "results" / "accumulation.md"
    before = results.read_bytes() if results.exists() else None
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "accumulation.py"), "--quick", "--steps", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = re.findall(
        r"^\| (\d+) \| (\d+) \| [\d,]+ \| -?[\d,]+ \| .* \| ([\d.e-]+) \|$", run.stdout, flags=re.MULTILINE
    )
    assert [(int(n), int(size)) for n, size, _ in rows] == [(1, 64), (2, 32), (4, 16), (8, 8)], run.stdout
    norms = [float(norm) for _, _, norm in rows]
    assert norms[0] > 0 and max(norms) - min(norms) <= 1e-4 * norms[0]  # the same batch and weights: the same gradient
    assert (results.read_bytes() if results.exists() else None) == before
