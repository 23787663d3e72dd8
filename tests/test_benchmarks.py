"""Smoke runs of the benchmark scripts whose quick mode writes no results file, so a change to the
model cannot break them unnoticed (the class-token-only last block once broke scaling.py's
stand-in attention)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def benchmark_module(name: str):
    """A module of benchmarks/, imported as its scripts import each other (the folder on sys.path)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_run_to_end_reports_the_childs_own_peak_memory_and_stderr_and_exits_on_failure():
    common = benchmark_module("common")
    # 200 MB written (not just mapped), held past a reading of the child's memory (every 0.5 s).
    child = "import sys, time; block = b'x' * (200 << 20); print('done', file=sys.stderr); time.sleep(1.5)"
    wall, peak_mb, stderr = common.run_to_end([sys.executable, "-c", child])
    assert wall > 0 and stderr.strip() == "done"
    assert peak_mb >= 200  # the child's 200 MB block, not this process's size
    with pytest.raises(SystemExit, match="no such thing"):
        common.run_to_end([sys.executable, "-c", "import sys; sys.exit('no such thing')"])


def test_allocators_refuses_a_library_the_loader_cannot_preload_before_training(tmp_path):
    results = BENCHMARKS / "results" / "allocators.md"
    before = results.read_bytes() if results.exists() else None
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "allocators.py"), "--preload", f"missing={tmp_path / 'libnone.so'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "missing:" in run.stderr and "cannot be preloaded" in run.stderr
    assert run.stdout == ""  # no training run started (each prints a line)
    assert (results.read_bytes() if results.exists() else None) == before


def test_speed_products_replay_records_every_matrix_product_of_a_training_step():
    speed = benchmark_module("speed")
    import torch

    from vitlab.config import ModelConfig
    from vitlab.models.flops import training_flops

    speed.use_device("cpu")
    config = ModelConfig(img_size=8, in_channels=1, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=3)
    batch = 4
    model = speed.vitlab_model(config)
    step = speed.train_step_fn(model, config, batch, False, None)
    replay = speed.products_only_fn(step)
    products, flops = replay.run, replay.flops
    # Forward, and backward for inputs and weights: the analytic 3x the forward, less the patch
    # embedding's input gradient (images need none), plus the folded norms' small vector products.
    patch_input_gradient = 2 * batch * config.num_patches * config.patch_size**2 * config.embed_dim
    expected = training_flops(config) * batch - patch_input_gradient
    assert expected <= flops <= 1.05 * expected
    recorder = speed.ProductRecorder()
    with recorder:
        products()
    assert len(recorder.calls) > 6 * config.depth  # at least the forward and backward products of every block
    assert {func for func, _, _ in recorder.calls} <= speed.MATRIX_PRODUCTS
    # Every product is of one kind, and each kind replays its own.
    assert set(replay.kinds) == {"attention", "weight gradients", "forward and input gradients"}
    assert sum(kind_flops for _, kind_flops in replay.kinds.values()) == flops
    with speed.ProductRecorder() as attention_only:
        replay.kinds["attention"][0]()
    assert {func for func, _, _ in attention_only.calls} == {torch.ops.aten.bmm.default}
    # The replay calls exactly the recorded products, in the same layouts.
    with speed.ProductRecorder() as again:
        step()
    assert [(f, layout) for f, layout, _ in again.calls] == [(f, layout) for f, layout, _ in recorder.calls]


def test_speed_inference_calls_run_under_autocast_only_when_given_a_dtype():
    speed = benchmark_module("speed")
    import torch

    speed.use_device("cpu")
    seen = []

    def logits(images):
        seen.append((len(images), torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return images

    images = torch.zeros(3, 1, 2, 2)
    speed.inference_fn(logits, images, torch.bfloat16)()
    speed.inference_fn(logits, images[:1], None)()
    assert seen[0] == (3, True, torch.bfloat16)
    assert seen[1][:2] == (1, False)
    # Every runner gets one batched figure and 50 batch-1 latencies per round from runs of consecutive calls,
    # and 50 from calls one each in turn, each kind after a warm-up call.
    seen.clear()
    order = []
    runners = {c: (lambda images, c=c: order.append(c) or logits(images)) for c in ("a", "b")}
    figures = {c: speed.inference_figures() for c in runners}
    speed.time_inference(runners, images, torch.bfloat16, None, figures)
    assert [(n, on) for n, on, _ in seen] == [(3, True)] * (2 + 2 * 3) + [(1, False)] * (2 + 2 * 50 + 2 * 50)
    single = order[2 + 2 * 3 + 2 :]
    assert single[:100] == (["a"] * 10 + ["b"] * 10 + ["b"] * 10 + ["a"] * 10) * 2 + ["a"] * 10 + ["b"] * 10
    assert single[100:] == ["a", "b", "b", "a"] * 25
    for f in figures.values():
        assert len(f["batch256"]) == 1 and f["batch256"][0] > 0
        assert len(f["latency"]) == len(f["latency_in_turn"]) == 50
    summary = speed.inference_summary(figures["a"])
    assert 0 < summary["latency_ms"]["median"] <= summary["latency_ms"]["p99"]
    assert summary["latency_in_turn_ms"]["median"] > 0
    # A runner alone (the exported graph's) has no other calls to take turns with: no in-turn figure.
    order.clear()
    alone = {"a": speed.inference_figures()}
    speed.time_inference({"a": runners["a"]}, images, None, None, alone)
    assert len(order) == 1 + 3 + 1 + 50 and len(alone["a"]["latency"]) == 50
    assert "latency_in_turn_ms" not in speed.inference_summary(alone["a"])


def test_speed_compares_like_with_like_compiled_rows_with_hugging_face_compiled():
    speed = benchmark_module("speed")
    speeds = {"vitlab": 10.0, "vitlab-compiled": 13.0, "hf-eager": 8.0, "hf-sdpa": 2.0, "hf-compiled": 9.0}
    # Eager rows: the faster of Hugging Face's eager attention settings, even where compiled runs faster still.
    assert speed.peer_of("vitlab", speeds) == "hf-eager"
    assert speed.peer_of("hf-sdpa", speeds) == "hf-eager"
    assert speed.peer_of("vitlab", {**speeds, "hf-sdpa": 8.5}) == "hf-sdpa"
    assert speed.peer_of("vitlab-compiled", speeds) == "hf-compiled"
    assert speed.peer_of("hf-compiled", speeds) == "hf-compiled"
    # A peer left out of the run (it failed to build or compile) gives no ratio rather than another peer's.
    assert speed.peer_of("vitlab-compiled", {"vitlab-compiled": 13.0, "hf-eager": 8.0}) is None
    assert speed.peer_of("vitlab", {"vitlab": 10.0, "hf-compiled": 9.0}) is None
    assert set(speed.COMPILED_CONTENDERS) <= set(speed.CONTENDERS)


def test_median_and_quartiles_of_paired_ratios():
    common = benchmark_module("common")
    assert common.median_and_quartiles([5.0, 1.0, 4.0, 2.0, 3.0]) == (3.0, 1.5, 4.5)
    assert common.median_and_quartiles([1.25]) == (1.25, 1.25, 1.25)
    # From two ratios statistics.quantiles would give -0.375 and 2.475: no speed ratio is below zero.
    assert common.median_and_quartiles([0.1, 2.0]) == (1.05, 0.1, 2.0)


def test_the_machine_line_names_the_cpus_family_and_model_where_linux_lists_them(monkeypatch):
    # Two AMD EPYCs of one name ran bf16 products at 410 and 700 GFLOP/s: the numbers tell them apart.
    common = benchmark_module("common")
    cpuinfo = {"model name": "AMD EPYC", "cpu family": "26", "model": "2"}
    monkeypatch.setattr(common, "cpuinfo_field", cpuinfo.get)
    assert common.cpu_model() == "AMD EPYC family 26 model 2"
    del cpuinfo["cpu family"]
    assert common.cpu_model() == "AMD EPYC"


def test_record_writes_a_whole_report_and_a_smoke_run_leaves_the_recorded_one(tmp_path, monkeypatch, capsys):
    common = benchmark_module("common")
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    common.record("speed.md", "| figure |\n| 1.40x |")
    written = (tmp_path / "results" / "speed.md").read_text()
    assert written == "| figure |\n| 1.40x |\n"
    common.record("speed.md", "| figure |\n| smoke |", smoke_run=True)
    assert (tmp_path / "results" / "speed.md").read_text() == written  # printed, not recorded
    assert capsys.readouterr().out == "| figure |\n| 1.40x |\n| figure |\n| smoke |\n"
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["speed.md"]  # no temporary file left


def test_a_missing_cifar_archive_stops_the_benchmark_in_one_line(tmp_path, monkeypatch):
    common = benchmark_module("common")
    monkeypatch.setattr(common, "CIFAR_ARCHIVE", tmp_path / "nowhere.tar.gz")
    with pytest.raises(SystemExit, match="no CIFAR-10 JPEG archive at .*nowhere.tar.gz: set VITLAB_SHARED_DATA"):
        common.cifar_folder(tmp_path / "work")


def use_a_tiny_mnist_config(monkeypatch) -> None:
    """Point speed.py's "mnist" configuration, on CPU, at a one-block model of 8x8 images trained at batch 4
    (the step benchmarks' smoke runs), with a fixed seed."""
    import torch

    from vitlab.config import ModelConfig

    speed = benchmark_module("speed")
    speed.use_device("cpu")
    tiny = ModelConfig(img_size=8, in_channels=1, patch_size=4, embed_dim=16, depth=1, num_heads=2, num_classes=3)
    monkeypatch.setitem(speed.CONFIGS, "mnist", (tiny, 4))
    torch.manual_seed(0)


def test_step_costs_fits_a_fixed_and_a_per_image_cost_and_says_what_the_target_needs(monkeypatch, capsys):
    step_costs = benchmark_module("step_costs")
    # A step of 10 ms plus 0.1 ms per image is recovered exactly; a point off the line is reported.
    fixed, per_image, worst = step_costs.fit_line([16, 64, 256], [0.0116, 0.0164, 0.0356])
    assert (round(fixed, 6), round(per_image, 7), round(worst, 9)) == (0.01, 0.0001, 0.0)
    assert step_costs.fit_line([16, 64, 256], [0.0116, 0.0164 * 1.1, 0.0356])[2] > 0.03
    # vitlab's step at batch 256 takes 38.16 ms (10 ms + 110 us an image) and the peer's 1.25x as long:
    # 1.5x the peer's speed allows 38.16 x 1.25 / 1.5 = 31.8 ms, 85.2 us an image after the fixed 10 ms.
    result = {
        "batches": [64, 256],
        "contenders": {"vitlab": {"fixed_ms": 10.0, "per_image_us": 110.0, "step_ms": [17.04, 38.16]}},
        "vs_peer": {"vitlab": {"batches": [(1.2, 1.1, 1.3), (1.25, 1.2, 1.3)]}},
    }
    text = step_costs.needed_for_target(result, 256)
    assert "allows a step of 31.8 ms" in text
    assert "keeping its fixed 10.0 ms, it would have to be 85.2 us (23% less)" in text
    assert "with no fixed cost at all, 124.2 us (met as it is)" in text

    # A smoke run on a tiny model, eager contenders only (compiling a graph per batch size takes minutes):
    # every contender's line and ratios reach the report, which a quick run does not record.
    use_a_tiny_mnist_config(monkeypatch)
    monkeypatch.setitem(step_costs.BATCHES, "mnist", (2, 4, 8))
    monkeypatch.setattr(step_costs, "CONTENDERS", ("vitlab", "hf-eager"))
    result = step_costs.bench_config("mnist", rounds=1, steps=1)
    for figures in result["contenders"].values():
        assert len(figures["step_ms"]) == 3 and all(ms > 0 for ms in figures["step_ms"])
        assert figures["fit_worst"] >= 0
    capsys.readouterr()
    step_costs.write_report([result], quick=True)
    report = capsys.readouterr().out
    assert re.search(r"^\| vitlab( \| -?[\d.]+x \(-?[\d.]+--?[\d.]+\)){5} \|$", report, flags=re.MULTILINE)
    assert "1.5x hf-eager's speed (the paired ratio's median) allows a step of" in report


def test_step_ablation_takes_out_gelu_and_softmax_only_while_asked_and_reports_each_variant(monkeypatch, capsys):
    import torch
    import torch.nn.functional as F

    step_ablation = benchmark_module("step_ablation")
    vit = step_ablation.vit
    x = torch.linspace(-3, 3, 7)
    with step_ablation.without(("gelu",)):
        assert torch.equal(vit.F.gelu(x), x) and torch.equal(vit.F.relu(x), F.relu(x))
        assert vit.softmax_rows(x) is not x
    with step_ablation.without(("softmax",)):
        assert vit.softmax_rows(x) is x and not torch.equal(vit.F.gelu(x), x)
    assert not torch.equal(vit.F.gelu(x), x) and vit.softmax_rows(x) is not x  # restored on leaving

    # A smoke run on a tiny model: every variant and the peer are timed, their weights stay finite, and the
    # report, which a quick run does not record, has a row per variant.
    use_a_tiny_mnist_config(monkeypatch)
    result = step_ablation.bench_config("mnist", rounds=1, steps=1)
    assert list(result["variants"]) == [*step_ablation.VARIANTS, step_ablation.PEER]
    assert all(figures["step_ms"] > 0 for figures in result["variants"].values())
    assert result["variants"]["vitlab"]["vs_vitlab"] == (1.0, 1.0, 1.0)
    capsys.readouterr()
    step_ablation.write_report([result], quick=True)
    report = capsys.readouterr().out
    row = r"^\| vitlab without GELU and softmax \| [\d.]+ \| [\d.]+x \([\d.]+-[\d.]+\) \| -?\d+% \| [\d.]+x \([\d.]+-[\d.]+\) \|$"
    assert re.search(row, report, re.MULTILINE)

    # A removal that no longer reaches the model (its attention computing weights another way) stops the run
    # rather than timing the unchanged step under the variant's name.
    config, _ = step_ablation.speed.CONFIGS["mnist"]
    model = step_ablation.speed.vitlab_model(config)
    step_ablation.check_removal(model, config, ("gelu", "softmax"))
    monkeypatch.setattr(vit, "attend", lambda q, k, v, **_: (F.scaled_dot_product_attention(q, k, v), None))
    with pytest.raises(SystemExit, match="removing softmax left vitlab's features unchanged"):
        step_ablation.check_removal(model, config, ("softmax",))


def test_step_breakdown_sorts_each_operator_into_its_kind_and_accounts_for_the_whole_step(monkeypatch, capsys):
    step_breakdown = benchmark_module("step_breakdown")
    kind_of = step_breakdown.kind_of
    assert kind_of("aten::addmm") == kind_of("aten::mm") == "matrix products"
    assert kind_of("aten::bmm") == "attention's batched products"
    assert kind_of("aten::gelu_backward") == "GELU"
    assert kind_of("aten::copy_") == "copies and casts"
    assert kind_of("graph_0_cpp_fused_gelu_view_6") == "fused kernels (torch.compile)"
    for overhead in ("aten::view", "aten::linear", "AddmmBackward0", "Optimizer.step#AdamW.step"):
        assert kind_of(overhead) == step_breakdown.OVERHEAD, overhead
    assert kind_of("aten::add") == kind_of("aten::nll_loss_backward") == step_breakdown.OTHER

    # A smoke run on a tiny model, eager contenders only (compiling takes minutes): the kinds and the
    # untraced rest add up to each profiled step, products and GELU are found in both models, and the
    # report, which a quick run does not record, has a row per kind with its ratio to the peer.
    use_a_tiny_mnist_config(monkeypatch)
    monkeypatch.setattr(step_breakdown, "CONTENDERS", ("vitlab", "hf-eager"))
    result = step_breakdown.bench_config("mnist", rounds=1, steps=2)
    for figures in result["contenders"].values():
        kinds = figures["kinds_ms"]
        assert kinds["matrix products"] > 0 and kinds["GELU"] > 0 and figures["wall_ms"] > 0
        assert sum(kinds.values()) == pytest.approx(figures["profiled_ms"])
    capsys.readouterr()
    step_breakdown.write_report([result], quick=True)
    report = capsys.readouterr().out
    assert re.search(
        r"^\| matrix products \| [\d.]+ \(\d+%\) \| [\d.]+ \(\d+%\) \| [\d.]+x \([\d.]+-[\d.]+\) \|$",
        report,
        re.MULTILINE,
    )
    assert re.search(
        r"^\| \*\*step, unprofiled\*\* \| \*\*[\d.]+\*\* \| \*\*[\d.]+\*\* \| \*\*[\d.]+x \([\d.]+-[\d.]+\)\*\* \|$",
        report,
        re.M,
    )
