"""The command line end to end, through subprocesses, as a user runs it."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab as vitlab_package
from tests.helpers import grey_image_folder, shared_data, unreadable_image_folder
from vitlab import cli, terminal
from vitlab.cli import byte_size
from vitlab.cli import main as vitlab_main
from vitlab.config import DataConfig
from vitlab.cores import available_cores
from vitlab.data.datasets import open_dataset
from vitlab.data.sources import load_split
from vitlab.engine import compare as compare_engine
from vitlab.engine.runtime import autocast_dtype
from vitlab.export import OnnxClassifier
from vitlab.launch import remove_abandoned_worker_folders

QUICK = ["data.train_subset=1000", "data.test_subset=300", "train.batch_size=50", "train.warmup_epochs=0.2"]
# --nproc runs CPU processes (gloo) here, also on a machine with a GPU: one GPU cannot take two processes.
NPROC_QUICK = [*QUICK, "train.device=cpu"]


def vitlab(*args, check=True, env=None):
    result = subprocess.run(
        [sys.executable, "-m", "vitlab", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=None if env is None else {**os.environ, **env},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"vitlab {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = vitlab("train", "--model", "mnist-tiny", "--epochs", 2, "--out", run_dir, "--seed", 3, "--json", *QUICK)
    return run_dir, json.loads(result.stdout)


def test_train_json_prints_one_object_and_writes_the_run_directory(trained_run):
    run_dir, summary = trained_run
    assert summary["run_dir"] == str(run_dir)
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert (run_dir / "config.yaml").exists()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    for name in ("last", "best"):
        assert (run_dir / "checkpoints" / f"{name}.safetensors").exists()
        assert (run_dir / "checkpoints" / f"{name}.json").exists()


def test_a_path_inside_a_run_given_for_the_run_names_the_run(trained_run, tmp_path, capsys):
    run_dir, _ = trained_run
    for inside in (run_dir / "checkpoints", run_dir / "checkpoints" / "best.safetensors"):
        assert vitlab_main(["train", "--resume", str(inside)]) == 2
        said = capsys.readouterr().err
        assert said == f"vitlab: error: {inside} is not a run directory (no config.yaml); the run is {run_dir}\n"
    assert vitlab_main(["report", str(run_dir / "checkpoints")]) == 2
    assert capsys.readouterr().err.endswith(f"(needs config.yaml and metrics.jsonl); the run is {run_dir}\n")
    assert vitlab_main(["train", "--resume", str(tmp_path / "absent")]) == 2
    assert capsys.readouterr().err == f"vitlab: error: run directory not found: {tmp_path / 'absent'}\n"
    assert vitlab_main(["train", "--resume", str(tmp_path)]) == 2  # not inside a run: no hint
    assert capsys.readouterr().err == f"vitlab: error: {tmp_path} is not a run directory (no config.yaml)\n"


def test_eval_reports_accuracy_and_per_class_accuracy(trained_run):
    run_dir, _ = trained_run
    report = json.loads(vitlab("eval", run_dir, "--json").stdout)
    assert report["dataset"] == "mnist" and report["num_examples"] == 10000
    assert set(report["per_class_accuracy"]) == {str(i) for i in range(10)}
    human = vitlab("eval", run_dir).stdout
    assert "accuracy" in human and "top-5" in human


def test_eval_counts_the_images_it_has_scored_on_a_bar(trained_run, monkeypatch, capsys):
    run_dir, _ = trained_run
    bars = []

    @contextlib.contextmanager
    def recording_bar(label, total):
        bars.append([label, total, 0])
        yield lambda done=1: bars[-1].__setitem__(2, bars[-1][2] + done)

    monkeypatch.setattr(terminal, "counting_bar", recording_bar)
    assert vitlab_main(["eval", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_examples"] == 10000
    assert bars == [["scoring", 10000, 10000]]  # advanced batch by batch up to the whole test set


def test_eval_on_a_missing_device_fails_before_reading_data(trained_run, monkeypatch):
    run_dir, _ = trained_run
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU, even on a machine that has one
    _assert_clean_error(
        vitlab("eval", run_dir, "--dataset", "cifar10", "--device", "cuda", check=False), "--device cuda"
    )


def test_eval_on_a_data_set_of_another_class_count_fails_before_fetching_it(trained_run, tmp_path):
    run_dir, _ = trained_run
    # cifar100 is not in tmp_path: before the check, eval went for the download (the closed mirror here).
    result = vitlab("eval", run_dir, "--dataset", "cifar100", check=False, env={"VITLAB_DATA": str(tmp_path)})
    _assert_clean_error(result, "the model has 10 classes but cifar100 has 100")
    assert list(tmp_path.iterdir()) == []  # nothing fetched, no folder made


def test_eval_reads_the_data_set_from_where_the_run_trained_on_it(tmp_path):
    run_dir = tmp_path / "run"
    data_dir = shared_data("fashion-mnist")
    trained = vitlab(
        "train", "--dataset", "fashion-mnist", f"data.data_dir={data_dir}", "--epochs", 1, "--out", run_dir, *QUICK
    )
    assert "on fashion-mnist with the fashion-mnist recipe" in trained.stderr  # no --recipe: the data set's own
    assert "stem: conv" in (run_dir / "config.yaml").read_text()
    same = vitlab("eval", run_dir, "--json")  # no --data-dir: the closed mirror is never asked
    scores = json.loads(same.stdout)
    assert scores["dataset"] == "fashion-mnist" and scores["num_examples"] == 10000
    assert "Trouser" in scores["per_class_accuracy"] and same.stderr == ""
    other = vitlab("eval", run_dir, "--dataset", "mnist", "--json")
    assert json.loads(other.stdout)["dataset"] == "mnist"
    assert "trained on classes T-shirt/top, Trouser, Pullover, ... and mnist has 0, 1, 2, ..." in other.stderr


def test_eval_scores_in_the_precision_the_run_trained_in(tmp_path):
    # `vitlab eval` used bf16 wherever the CPU has it, so a run trained in fp32 got scores other than its own.
    run_dir = tmp_path / "fp32"
    vitlab("train", "--epochs", 1, "--out", run_dir, "--quiet", "--no-report", "train.precision=fp32", *QUICK)
    default = json.loads(vitlab("eval", run_dir, "--json").stdout)
    assert default["precision"] == "fp32"
    assert json.loads(vitlab("eval", run_dir, "--json", "--precision", "fp32").stdout) == default
    assert vitlab("eval", run_dir).stdout.splitlines()[0].endswith("(10000 images, fp32)")
    if autocast_dtype("auto", torch.device("cpu")) is not None:
        bf16 = json.loads(vitlab("eval", run_dir, "--json", "--precision", "bf16").stdout)
        assert bf16["precision"] == "bf16" and bf16["loss"] != default["loss"]
    else:
        refused = vitlab("eval", run_dir, "--precision", "bf16", check=False)
        _assert_clean_error(refused, "--precision=bf16 but this cpu has no bf16 support")


def test_eval_holds_out_the_images_a_folder_run_held_out(tmp_path, monkeypatch, capsys):
    # A folder without train/ and test/ is split at random by the run's seed and data.test_fraction; eval
    # drew the default split (seed 0, 20%), which held images the model had trained on.
    folder, run_dir = grey_image_folder(tmp_path / "pictures", per_class=20), tmp_path / "run"
    env = {"VITLAB_CACHE": str(tmp_path / "cache")}
    args = ["--epochs", 1, "--seed", 5, "--out", run_dir, "--quiet", "--no-report", "train.batch_size=8"]
    vitlab("train", "--dataset", folder, *args, "data.test_fraction=0.3", env=env)
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    scored = json.loads(vitlab("eval", run_dir / "checkpoints" / "last.safetensors", "--json", env=env).stdout)
    assert scored["num_examples"] == json.loads((run_dir / "run.json").read_text())["test_images"] == 12
    assert scored["accuracy"] == pytest.approx(last["test_accuracy"]) and scored["loss"] == pytest.approx(
        last["test_loss"]
    )
    # Checkpoints from before the split was recorded: from the run's config.yaml, else the default, said so.
    recorded = {"dataset": str(folder)}
    assert cli.trained_test_split(recorded, str(folder), str(run_dir)) == (0.3, 5)
    assert cli.trained_test_split(recorded, str(folder), str(tmp_path / "elsewhere.safetensors")) == (0.2, 0)
    assert "does not say how its image folder was split" in capsys.readouterr().err
    assert cli.trained_test_split(recorded, "mnist", str(run_dir)) == (0.2, 0)  # another data set: its own split
    # A folder that changes is split anew: eval and a resume say that the test images are not the same.
    assert "has changed" not in vitlab("eval", run_dir, env=env).stderr
    assert "has changed" not in vitlab("train", "--resume", run_dir, "--epochs", 2, "--quiet", env=env).stderr
    Image.new("L", (12, 10), 90).save(folder / "a" / "late.png")
    changed = vitlab("eval", run_dir, env=env).stderr
    assert f"vitlab: note: {folder} has changed since the model trained on it" in changed
    resumed = vitlab("train", "--resume", run_dir, "--epochs", 3, "--quiet", env=env)
    assert f"vitlab: note: {folder} has changed since this run began" in resumed.stderr
    vitlab("report", run_dir, env=env)
    fingerprint = json.loads((run_dir / "run.json").read_text())["folder_state"]
    assert (
        f"| image folder fingerprint (changes when its files do) | {fingerprint} |"
        in (run_dir / "report.md").read_text()
    )
    (folder / "b" / "notes.txt").write_text("not an image: left out of the score, and said so")
    noted = vitlab("eval", run_dir, env=env).stderr
    assert (
        f"vitlab: note: 1 file(s) not in PNG, JPEG, BMP, WebP, GIF or TIFF format left out (first: {folder / 'b' / 'notes.txt'})"
        in noted
    )


def test_predict_accepts_images_of_any_mode_and_size(trained_run, tmp_path):
    run_dir, _ = trained_run
    digit = load_split("mnist", "test").images[0, 0].numpy()
    big = Image.fromarray(digit).resize((100, 100))
    paths = []
    for mode, ext in (
        ("L", "png"),
        ("RGBA", "png"),
        ("RGB", "jpg"),
        ("P", "bmp"),
        ("RGB", "webp"),
        ("P", "gif"),
        ("F", "tif"),
    ):
        path = tmp_path / f"digit_{mode}.{ext}"
        big.convert(mode).save(path)
        paths.append(path)
    sixteen = tmp_path / "digit16.png"
    Image.fromarray(digit.astype(np.uint16) * 257).save(sixteen)
    paths.append(sixteen)
    out = json.loads(vitlab("predict", run_dir, *paths, "--top-k", 2, "--json").stdout)
    assert len(out["predictions"]) == len(paths)
    for item in out["predictions"]:
        assert len(item["top_k"]) == 2
        assert item["top_k"][0]["probability"] >= item["top_k"][1]["probability"]
    human = vitlab("predict", run_dir, paths[0]).stdout
    assert str(paths[0]) in human and "%" in human
    (tmp_path / "notes.txt").write_text("not an image, and not an image name either")
    (tmp_path / ".hidden").write_text("hidden files are passed over without a word")
    listed = vitlab("predict", run_dir, tmp_path, "--top-k", 2, "--json")
    assert f"1 file(s) not in PNG, JPEG, BMP, WebP, GIF or TIFF format left out (first: {tmp_path / 'notes.txt'})" in (
        listed.stderr
    )
    whole_folder = json.loads(listed.stdout)["predictions"]
    assert [item["image"] for item in whole_folder] == sorted(str(path) for path in paths)
    by_name = {item["image"]: item for item in out["predictions"]}
    for item in whole_folder:
        expected = by_name[item["image"]]["top_k"]
        assert [entry["class"] for entry in item["top_k"]] == [entry["class"] for entry in expected]
        assert [entry["probability"] for entry in item["top_k"]] == pytest.approx(
            [entry["probability"] for entry in expected], abs=1e-6
        )
    (tmp_path / "empty").mkdir()
    _assert_clean_error(
        vitlab("predict", run_dir, tmp_path / "empty", check=False), "no PNG, JPEG, BMP, WebP, GIF or TIFF file"
    )


def test_predict_classifies_every_readable_file_and_ends_in_error_for_the_others(trained_run, tmp_path):
    run_dir, _ = trained_run
    digit = load_split("mnist", "test").images[0, 0].numpy()
    for name in ("a.png", "c.png"):
        Image.fromarray(digit).save(tmp_path / name)
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes()[:60])  # cut short
    (tmp_path / "d.png").write_bytes(b"")
    human = vitlab("predict", run_dir, tmp_path, check=False)
    assert human.returncode == 2 and "Traceback" not in human.stderr
    assert [line.split(":")[0] for line in human.stdout.splitlines()] == [str(tmp_path / n) for n in ("a.png", "c.png")]
    assert human.stderr.splitlines() == [
        f"vitlab: error: {tmp_path / 'b.png'} is damaged or truncated (image file is truncated)",
        f"vitlab: error: {tmp_path / 'd.png'} is empty",
        "vitlab: error: 2 of 4 files could not be read and were left out",
    ]
    as_json = vitlab("predict", run_dir, tmp_path, "--json", check=False)
    assert as_json.returncode == 2
    out = json.loads(as_json.stdout)
    assert [item["image"] for item in out["predictions"]] == [str(tmp_path / n) for n in ("a.png", "c.png")]
    assert [item["image"] for item in out["unreadable"]] == [str(tmp_path / n) for n in ("b.png", "d.png")]
    assert out["unreadable"][1]["error"].endswith("d.png is empty")
    # Nothing readable: the same lines, and with --json still the JSON document, its predictions empty.
    for name in ("a.png", "c.png"):
        (tmp_path / name).unlink()
    none_read = vitlab("predict", run_dir, tmp_path, "--json", check=False)
    assert none_read.returncode == 2 and none_read.stderr.splitlines()[-1].endswith(
        "2 of 2 files could not be read and were left out"
    )
    out = json.loads(none_read.stdout)
    assert out["predictions"] == [] and [item["image"] for item in out["unreadable"]] == [
        str(tmp_path / "b.png"),
        str(tmp_path / "d.png"),
    ]
    no_gpu = vitlab(
        "predict", run_dir, tmp_path / "d.png", "--device", "cuda", check=False, env={"CUDA_VISIBLE_DEVICES": ""}
    )
    _assert_clean_error(no_gpu, "device cuda asks for CUDA")  # before any file is read
    alone = vitlab("predict", run_dir, tmp_path / "d.png", check=False)
    assert (alone.returncode, alone.stdout, alone.stderr) == (2, "", f"vitlab: error: {tmp_path / 'd.png'} is empty\n")


def test_cache_lists_and_clears_the_decoded_image_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    place = tmp_path / "cache" / "folders"
    assert vitlab_main(["cache"]) == 0
    assert capsys.readouterr().out == f"0 decoded image splits in {place}, 0 B\n"
    root = grey_image_folder(tmp_path / "pictures")
    open_dataset(DataConfig(dataset=str(root), test_fraction=0.34), 1, 8)
    assert vitlab_main(["cache"]) == 0
    lines = capsys.readouterr().out.splitlines()
    on_disk = sum(f.stat().st_size for f in place.rglob("*") if f.is_file())
    assert lines[0] == f"2 decoded image splits in {place}, {byte_size(on_disk)}"
    assert sorted(line.split("B  ")[1].split(", last used")[0] for line in lines[1:3]) == [
        f"{root} (2 test images, 1x8x8)",
        f"{root} (4 train images, 1x8x8)",
    ]
    assert lines[3].startswith("`vitlab cache --clear` deletes them")
    assert vitlab_main(["cache", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["bytes"] == on_disk and sorted((e["images"], e["split"]) for e in listed["entries"]) == [
        (2, "test"),
        (4, "train"),
    ]
    assert all(e["folder"] == str(root) and not e["outdated"] for e in listed["entries"])
    assert vitlab_main(["cache", "--clear"]) == 0
    assert capsys.readouterr().out == f"deleted 2 decoded image splits ({byte_size(on_disk)}) from {place}\n"
    assert list(place.iterdir()) == []
    assert [byte_size(n) for n in (999, 1050, 7_500_000_000)] == ["999 B", "1.05 kB", "7.5 GB"]


def test_info_for_a_preset_and_a_checkpoint(trained_run):
    run_dir, _ = trained_run
    preset = json.loads(vitlab("info", "--model", "mnist-tiny", "--json").stdout)
    from_run = json.loads(vitlab("info", run_dir, "--json").stdout)
    assert preset["parameters"] == from_run["parameters"]
    assert preset["forward_flops_per_image"] > 0
    assert "parameters" in vitlab("info").stdout
    s16 = vitlab("info", "--model", "S/16").stdout
    assert "  forward FLOPs     8.62 G per image\n" in s16  # 8,617 M
    assert "  tokens            197 (14x14 patches of 16px + class token)\n" in s16
    assert "  tokens            196 (14x14 patches of 16px)\n" in vitlab("info", "--model", "S/16", "pool=mean").stdout
    assert vitlab("--version").stdout.startswith(f"vitlab {vitlab_package.__version__} (torch {torch.__version__}")
    accuracy = from_run["metrics"]["test_accuracy"]
    assert f"  test accuracy     {accuracy:.2%}\n" in vitlab("info", run_dir).stdout
    small = json.loads(vitlab("info", "--model", "S/16", "img_size=32", "model.patch_size=4", "--json").stdout)
    assert small["model"]["img_size"] == 32 and small["model"]["patch_size"] == 4 and small["model"]["embed_dim"] == 384
    assert (
        small["forward_flops_per_image"]
        < 0.35 * json.loads(vitlab("info", "--model", "S/16", "--json").stdout)["forward_flops_per_image"]
    )  # 65 tokens instead of 197
    _assert_clean_error(vitlab("info", "--model", "S/16", "train.lr=3", check=False), "only model settings apply")
    _assert_clean_error(vitlab("info", run_dir, "depth=3", check=False), "has its own model")


def test_info_lists_every_preset_with_the_figures_of_its_built_model(capsys):
    from vitlab.models.flops import forward_flops
    from vitlab.models.registry import build_model, model_config, preset_names

    assert vitlab_main(["info", "--presets", "--json"]) == 0
    rows = {row["preset"]: row for row in json.loads(capsys.readouterr().out)["presets"]}
    assert list(rows) == preset_names() and [name for name, row in rows.items() if row["default"]] == ["mnist-tiny"]
    for name in ("mnist-tiny", "resnet-small", "Ti/16"):  # counted on the meta device: the same as a built model
        model = build_model(model_config(name))
        assert rows[name]["parameters"] == sum(p.numel() for p in model.parameters())
        assert rows[name]["forward_flops_per_image"] == forward_flops(model.config)
    assert (
        rows["S/16"]["tokens"] == 197
        and rows["S/16"]["input"] == "3x224x224"
        and rows["resnet-small"]["tokens"] is None
    )
    assert vitlab_main(["info", "--presets"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["preset", "model", "input", "tokens", "parameters", "forward", "FLOPs"]
    assert table[1].startswith("mnist-tiny *  ViT patch 7, width 64, depth 4, heads 4") and table[1].endswith("5.83 M")
    assert len(table) == 2 + len(preset_names())
    assert vitlab_main(["info"]) == 0 and capsys.readouterr().out.endswith("(every preset: vitlab info --presets)\n")
    _assert_clean_error(vitlab("info", "--presets", "--model", "S/16", check=False), "--presets lists every preset")


def test_commands_keep_freed_memory_of_every_size_for_reuse(monkeypatch, capsys):
    # A command's process is vitlab's own: even blocks above glibc's largest mmap threshold stay for reuse.
    import vitlab.cli
    import vitlab.engine.runtime

    requests = []
    monkeypatch.setattr(vitlab.engine.runtime, "reuse_freed_memory", lambda **kwargs: requests.append(kwargs) or True)
    assert vitlab.cli.main(["info", "--model", "mnist-tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] > 0
    assert requests == [{"every_size": True}]


def test_resume_of_a_finished_run_with_more_epochs(trained_run, tmp_path):
    run_dir, _ = trained_run
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(run_dir, copy)
    config = (copy / "config.yaml").read_text()
    _assert_clean_error(vitlab("train", "--resume", copy, "--epochs", 1, check=False), "has trained 2 epochs already")
    assert (copy / "config.yaml").read_text() == config
    same = vitlab("train", "--resume", copy, "--no-report")
    assert "has finished: nothing left to train (--epochs above 2 trains on)" in same.stderr
    # The recipe the run began with is in its config, so the resumed run and its report still name it.
    assert "recipe: mnist" in config and "on mnist with the mnist recipe" in same.stderr
    assert "━" not in same.stderr  # no progress bar for no steps
    summary = json.loads(vitlab("train", "--resume", copy, "--epochs", 3, "--json").stdout)
    assert summary["epochs"] == 3
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == 3
    assert "mnist-tiny vit on mnist with the mnist recipe, 3 of 3 epochs" in (copy / "report.md").read_text()


def _assert_clean_error(result, fragment):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["train", "--model", "Z/9"], "unknown model preset"),
        (["train", "model.nonsense=1"], "unknown config key"),
        (["train", "embed_dim=30", "num_heads=4"], "not divisible"),
        (["train", "patch_size=40"], "larger than"),
        (["train", "--config", "/nonexistent.yaml"], "config file not found"),
        (["train", "--dataset", "imagenet"], "cifar100, or the path of an image folder"),
        (["eval", "/nonexistent/run"], "checkpoint not found"),
        (["info", "--model", "huge"], "unknown model preset"),
        (["train", "--bogus"], "unrecognized arguments"),
        (["train", "--epochs", "0"], "'0' is not a whole number of at least 1"),
        (["train", "--epochs", "2", "--time-budget", "1h"], "--time-budget: not allowed with argument --epochs"),
        (["finetune", "run", "--dataset", "mnist", "--time-budget", "1h", "--epochs", "2"], "not allowed with"),
        (["train", "data.train_subset=100"], "larger than the 100 training images; pass train.batch_size=N with N at"),
        (["train", "--resume", "run", "--seed", "1", "lr=0.1"], "--seed, key=value overrides cannot change it"),
        (["predict", "run", "digit.png", "--top-k", "-1"], "'-1' is not a whole number of at least 1"),
        (["train", "--time-budget", "-5m"], "cannot read duration '-5m'"),  # not argparse's "expected one argument"
        (["train", "train.freeze_until=5"], "train.freeze_until=5 is more than the model's 4 blocks"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(args, fragment):
    _assert_clean_error(vitlab(*args, check=False), fragment)


def test_a_run_refused_at_start_leaves_no_run_directory(tmp_path):
    refused = vitlab("train", "--out", tmp_path / "new" / "run", "data.train_subset=100", check=False)
    _assert_clean_error(refused, "larger than the 100 training images")
    assert list(tmp_path.iterdir()) == []  # neither the run directory nor the folder made for it
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("kept")
    _assert_clean_error(vitlab("train", "--out", tmp_path / "mine", "data.train_subset=100", check=False), "larger")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_bad_images_and_checkpoints_give_one_line_errors(trained_run, tmp_path):
    run_dir, _ = trained_run
    (tmp_path / "notes.png").write_text("just text")
    _assert_clean_error(vitlab("predict", run_dir, tmp_path / "notes.png", check=False), "not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    _assert_clean_error(vitlab("predict", run_dir, tmp_path / "empty.png", check=False), "empty")
    _assert_clean_error(vitlab("predict", run_dir, tmp_path / "absent.png", check=False), "not found")
    for command in (["predict", tmp_path / "notes.png"], ["eval"]):
        refused = vitlab(command[0], tmp_path / "absent.onnx", *command[1:], check=False)
        _assert_clean_error(refused, "exported model not found")
    (tmp_path / "fake.safetensors").write_bytes(b"\x00" * 64)
    _assert_clean_error(vitlab("eval", tmp_path / "fake.safetensors", check=False), "not a readable safetensors")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "model.pt")
    _assert_clean_error(vitlab("predict", tmp_path / "model.pt", "x.png", check=False), "is a PyTorch zip archive")


def test_bad_config_file_gives_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    _assert_clean_error(vitlab("train", "--config", tmp_path / "bad.yaml", check=False), "not valid YAML")
    (tmp_path / "keys.yaml").write_text("train:\n  learning_rate: 0.1\n")
    _assert_clean_error(vitlab("train", "--config", tmp_path / "keys.yaml", check=False), "unknown train key")


def test_ctrl_c_during_training_keeps_finished_epochs_and_resume_completes(tmp_path):
    import signal
    import time

    run_dir = tmp_path / "run"
    args = ["train", "--model", "mnist-tiny", "--epochs", 30, "--out", run_dir, "--quiet", *QUICK]
    # A shell starts background jobs with Ctrl-C ignored, and Python then keeps ignoring it: when pytest
    # itself runs in the background, the child would never see the SIGINT. Give it the default back.
    process = subprocess.Popen(
        [sys.executable, "-m", "vitlab", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "resume.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and f"--resume {run_dir}" in stderr
    done = len((run_dir / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done < 30
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")] == []
    info = json.loads(vitlab("info", run_dir, "--json").stdout)  # the saved checkpoint loads
    assert info["epoch"] >= 1
    summary = json.loads(vitlab("train", "--resume", run_dir, "--epochs", done + 1, "--json").stdout)
    assert summary["epochs"] == done + 1
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == done + 1


def test_a_run_stopped_before_its_first_epoch_ended_resumes_from_the_start(trained_run, tmp_path):
    # Such a run left its config and no checkpoint; resuming it must give the run it would have been.
    finished_dir, finished = trained_run
    run_dir = tmp_path / "stopped"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text((finished_dir / "config.yaml").read_text())
    summary = json.loads(vitlab("train", "--resume", run_dir, "--json", "--no-report").stdout)
    assert summary["epochs"] == finished["epochs"]
    assert summary["test_accuracy"] == finished["test_accuracy"]
    assert summary["test_loss"] == pytest.approx(finished["test_loss"], rel=1e-5)


def test_training_writes_a_report_and_report_rebuilds_it(trained_run):
    run_dir, summary = trained_run
    assert summary["report"] == str(run_dir / "report.md")
    text = (run_dir / "report.md").read_text()
    for figure in ("curves", "lr", "confusion", "per_class", "misclassified", "attention_0"):
        assert f"report/{figure}.png" in text
        assert (run_dir / "report" / f"{figure}.png").stat().st_size > 1000
    facts = [line for line in text.splitlines() if line.startswith(("| test images |", "| train images |"))]
    assert facts == ["| test images | 300 |", "| train images | 1,000 |"]  # each once (QUICK's subsets)
    (run_dir / "report" / "curves.png").unlink()
    assert json.loads(vitlab("report", run_dir, "--json").stdout)["report"] == str(run_dir / "report.md")
    assert (run_dir / "report" / "curves.png").exists()


def test_a_path_the_file_system_refuses_gives_one_line(trained_run, tmp_path, mnist_test):
    run_dir, _ = trained_run
    (tmp_path / "taken").write_text("a file where a folder should go")
    digit = tmp_path / "digit.png"
    Image.fromarray(mnist_test.images[0, 0].numpy()).save(digit)
    refused = vitlab("attention", run_dir, digit, "--out", tmp_path / "taken", check=False)
    _assert_clean_error(refused, f"File exists: {tmp_path / 'taken'}")


def test_attention_command_writes_layer_head_and_rollout_pngs(trained_run, tmp_path):
    run_dir, _ = trained_run
    digit = load_split("mnist", "test").images[0, 0].numpy()
    Image.fromarray(digit).save(tmp_path / "seven.png")
    out = json.loads(vitlab("attention", run_dir, tmp_path / "seven.png", "--out", tmp_path / "maps", "--json").stdout)
    names = sorted(p.split("/")[-1] for p in out["files"])
    assert names == ["00_seven_heads_layer3.png", "00_seven_input.png", "00_seven_layers.png", "00_seven_rollout.png"]
    assert all((tmp_path / "maps" / name).stat().st_size > 1000 for name in names)
    _assert_clean_error(vitlab("attention", run_dir, tmp_path / "seven.png", "--layer", 9, check=False), "out of range")


def test_compare_trains_each_model_and_writes_table_csv_and_plot(tmp_path):
    out = tmp_path / "cmp"
    result = vitlab(
        "compare",
        "--models",
        "mnist-tiny,resnet-small",
        "--epochs",
        1,
        "--out",
        out,
        "--json",
        "data.train_subset=500",
        "data.test_subset=200",
        "train.batch_size=64",
        "model.embed_dim=16",
    )
    # Each model trains as `vitlab train` shows it: epoch lines (a bar on a terminal), TensorBoard events;
    # the data's notes (here: a batch size that leaves images out) said once, not once per model.
    assert result.stderr.count("epoch   1/1  train loss") == 2
    assert result.stderr.count("vitlab: note: each epoch trains on 448 of the 500 training images") == 1
    assert all(any((out / name / "tensorboard").iterdir()) for name in ("mnist-tiny", "resnet-small"))
    summary = json.loads(result.stdout)
    assert [r["model"] for r in summary["results"]] == ["mnist-tiny", "resnet-small"]
    assert all(r["parameters"] > 0 and r["latency_ms"] > 0 for r in summary["results"])
    table = (out / "compare.md").read_text()
    assert table.startswith("# mnist-tiny vs resnet-small on mnist with the mnist recipe")
    assert "| mnist-tiny |" in table and "| resnet-small |" in table
    assert len((out / "compare.csv").read_text().splitlines()) == 3
    assert (out / "compare.png").stat().st_size > 1000
    _assert_clean_error(vitlab("compare", "--models", "mnist-tiny", "--epochs", 1, check=False), "at least two")
    twice = vitlab("compare", "--models", "mnist-tiny,mnist-tiny", "--epochs", 1, check=False)
    _assert_clean_error(twice, "names mnist-tiny more than once")
    again = vitlab("compare", "--models", "cifar-tiny,resnet-small", "--epochs", 1, "--out", out, check=False)
    _assert_clean_error(again, f"{out} holds a run of resnet-small with other settings; pick another --out")
    assert not (out / "cifar-tiny").exists()  # refused before anything trained


def test_a_stopped_compare_says_how_to_continue(tmp_path, monkeypatch, capsys):
    def stopped(name, config, run_dir, train=None, resume=False):
        raise KeyboardInterrupt  # Ctrl-C while the first model trains

    monkeypatch.setattr(compare_engine, "run_contender", stopped)
    out = tmp_path / "cmp"
    assert vitlab_main(["compare", "--models", "mnist-tiny,resnet-small", "--epochs", "1", "--out", str(out)]) == 130
    said = capsys.readouterr().err.splitlines()[-1]
    assert said == (
        f"vitlab: interrupted; the same command with --out {out} continues: finished models are kept "
        "and the stopped one resumes from its last finished epoch"
    )


@pytest.mark.parametrize("flags,quiet", [([], False), (["--quiet"], True)])
def test_compare_quiet_trains_each_model_without_a_progress_bar(tmp_path, monkeypatch, flags, quiet):
    asked = []

    def contender(name, config, run_dir, train=None, resume=False):
        train(SimpleNamespace(notes=[]))  # the trainer goes to train_with_progress as it is

    monkeypatch.setattr(compare_engine, "run_contender", contender)
    monkeypatch.setattr(
        cli, "train_with_progress", lambda trainer, quiet=False: asked.append(quiet) or _stop_with_ctrl_c()
    )
    out = tmp_path / "cmp"
    command = ["compare", "--models", "mnist-tiny,resnet-small", "--epochs", "1", "--out", str(out), *flags]
    assert vitlab_main(command) == 130
    assert asked == [quiet]


def _stop_with_ctrl_c():
    raise KeyboardInterrupt


def test_export_onnx_then_predict_with_it(trained_run, tmp_path):
    run_dir, _ = trained_run
    out = json.loads(vitlab("export", run_dir, "--out", tmp_path / "m.onnx", "--json").stdout)
    assert out["max_abs_diff"] <= 1e-4 and out["format"] == "onnx"
    assert OnnxClassifier(tmp_path / "m.onnx").fixed_batch is None  # any batch unless --fixed-batch
    digit = load_split("mnist", "test").images[0, 0].numpy()
    Image.fromarray(digit).save(tmp_path / "seven.png")
    via_onnx = json.loads(vitlab("predict", tmp_path / "m.onnx", tmp_path / "seven.png", "--json").stdout)
    via_torch = json.loads(vitlab("predict", run_dir, tmp_path / "seven.png", "--json").stdout)
    top_onnx, top_torch = via_onnx["predictions"][0]["top_k"][0], via_torch["predictions"][0]["top_k"][0]
    assert top_onnx["class"] == top_torch["class"]
    assert abs(top_onnx["probability"] - top_torch["probability"]) < 1e-4
    scored_onnx = json.loads(vitlab("eval", tmp_path / "m.onnx", "--json").stdout)
    scored_torch = json.loads(vitlab("eval", run_dir, "--precision", "fp32", "--json").stdout)  # as onnxruntime
    assert scored_onnx["num_examples"] == scored_torch["num_examples"] == 10000
    assert abs(scored_onnx["accuracy"] - scored_torch["accuracy"]) <= 2e-4  # a near-tie may flip, no more
    assert abs(scored_onnx["loss"] - scored_torch["loss"]) < 1e-4
    assert scored_onnx["precision"] == "fp32"
    _assert_clean_error(vitlab("eval", tmp_path / "m.onnx", "--precision", "bf16", check=False), "drop --precision")
    _assert_clean_error(
        vitlab("eval", tmp_path / "m.onnx", "--device", "cuda", check=False), "onnxruntime, not on cuda"
    )
    for command in (["info"], ["finetune", "--dataset", "mnist"]):
        refused = vitlab(command[0], tmp_path / "m.onnx", *command[1:], check=False)
        _assert_clean_error(refused, "is an exported ONNX file")
    ts = json.loads(vitlab("export", run_dir, "--format", "torchscript", "--out", tmp_path / "m.pt", "--json").stdout)
    assert ts["format"] == "torchscript" and (tmp_path / "m.pt").exists()
    fixed = vitlab(
        "export", run_dir, "--format", "torchscript", "--fixed-batch", 8, "--out", tmp_path / "f.pt", check=False
    )
    _assert_clean_error(fixed, "--fixed-batch applies to ONNX files")


def test_finetune_command_from_a_trained_run(trained_run, tmp_path):
    run_dir, _ = trained_run
    out = tmp_path / "ft"
    summary = json.loads(
        vitlab(
            "finetune",
            run_dir,
            "--dataset",
            "mnist",
            "--epochs",
            1,
            "--out",
            out,
            "--freeze-until",
            1,
            "--layer-decay",
            0.8,
            "--img-size",
            35,
            "--json",
            "--no-report",
            *QUICK,
        ).stdout
    )
    assert summary["epochs"] == 1
    config = (out / "config.yaml").read_text()
    assert "init_from:" in config and "img_size: 35" in config and "freeze_until: 1" in config


def test_nproc_launches_two_processes_through_torchrun(tmp_path):
    run_dir, temp = tmp_path / "ddp", tmp_path / "temp"
    temp.mkdir()
    result = vitlab(
        "train",
        "--nproc",
        2,
        "--epochs",
        1,
        "--out",
        run_dir,
        "--quiet",
        "--no-report",
        *NPROC_QUICK,
        env={"TMPDIR": str(temp)},
    )
    headers = [line for line in result.stderr.splitlines() if line.startswith("training mnist-tiny")]
    precision = "bf16" if autocast_dtype("auto", torch.device("cpu")) else "fp32"  # what auto picks on this CPU
    threads = terminal.counted(max(1, available_cores() // 2), "thread")  # each process's share of the cores
    assert len(headers) == 1 and f"{precision}, 2 processes x {threads}; run dir" in headers[0]  # rank 1 is silent
    assert result.stdout.count("test accuracy") == 1
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert "OMP_NUM_THREADS" not in result.stderr  # torchrun's banner about threads, set by us instead
    # Nothing left in the temporary folder; torchrun's own logs used to stay behind, a tree per run.
    assert [p.name for p in temp.iterdir() if not p.name.startswith("torchinductor_")] == []


def test_nproc_checks_its_arguments_before_starting_processes(trained_run, tmp_path):
    run_dir, _ = trained_run
    _assert_clean_error(vitlab("train", "--nproc", 2, "--out", run_dir, check=False), "already holds a run")
    _assert_clean_error(vitlab("train", "--nproc", 2, "model.depth=zero", check=False), "model.depth")
    _assert_clean_error(vitlab("train", "--nproc", 2, "--resume", tmp_path, check=False), "not a run directory")


def test_nproc_on_a_machine_with_fewer_gpus_says_so_before_starting_processes(tmp_path, monkeypatch, capsys):
    # On one GPU, --nproc 2 started two processes and the second died in torch.cuda.set_device(1) with a
    # traceback. Seen as a machine with one GPU: no process may start.
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    monkeypatch.setattr("vitlab.launch.run_processes", lambda *args: pytest.fail("processes were started"))
    assert vitlab_main(["train", "--nproc", "2", "--out", str(tmp_path / "run"), *QUICK]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "2 training processes on this machine need a GPU each, and it has 1" in error
    assert "train.device=cpu" in error


def test_an_error_inside_the_nproc_workers_is_printed_once_without_torchruns_report(tmp_path, monkeypatch):
    # Found only once the processes open the data: every worker meets it, the launcher prints it once.
    junk = unreadable_image_folder(tmp_path / "junk")
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    result = vitlab(
        "train", "--dataset", junk, "--nproc", 2, "--out", tmp_path / "run", "train.device=cpu", check=False
    )
    _assert_clean_error(result, "could be read")


def _stat_fields(pid: str) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state, parent pid, ... (OSError once it is gone)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _child_with_rank(parent: int, rank: int, timeout: float = 60.0, poll: float = 0.2) -> int:
    """The pid of the child process of `parent` whose environment holds RANK=rank (read from /proc),
    looked for every `poll` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                parent_pid = int(_stat_fields(pid)[1])
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:  # gone, or not ours to read
                continue
            if parent_pid == parent and f"RANK={rank}".encode() in environ:
                return int(pid)
        time.sleep(poll)
    raise AssertionError(f"no process of rank {rank} started under {parent}")


def _start_in_own_group(args: list, env: dict | None = None) -> subprocess.Popen:
    """`vitlab ARGS` in a process group of its own (a signal to the group reaches it and not pytest), with
    Ctrl-C's default handling even when pytest runs in the background (where a shell ignores it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "vitlab", *map(str, args)],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        env={**os.environ, **env} if env else None,
    )


def test_ctrl_c_under_nproc_says_once_how_to_resume(tmp_path):
    # A terminal's Ctrl-C reaches the launcher's process group: the launcher, which is torchrun's agent and
    # stops the workers (torchrun starts each in a session of its own).
    run_dir = tmp_path / "run"
    args = ["train", "--nproc", 2, "--epochs", 50, "--out", run_dir, "--quiet", *NPROC_QUICK]
    launcher = _start_in_own_group(args)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "resume.safetensors").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(launcher.pid, signal.SIGINT)
        _, stderr = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    assert launcher.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[1:] == [
        f"vitlab: interrupted; continue from the last finished epoch with: vitlab train --resume {run_dir} --nproc 2"
    ], stderr
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")] == []
    assert json.loads(vitlab("info", run_dir, "--json").stdout)["epoch"] >= 1


@pytest.mark.parametrize("nproc, moment", [(1, 0.5), (1, 2.0), (2, 0.5), (2, "workers start"), (2, "workers import")])
def test_ctrl_c_while_a_run_starts_up_prints_one_line_and_no_traceback(tmp_path, nproc, moment):
    # Whatever start-up is doing at that moment (importing torch, reading data, building the model), as
    # seconds after the start, or for --nproc as the moment its first worker appears (and 50 ms later,
    # while workers import): there torchrun's own Ctrl-C handling sent SIGINT on to half-started
    # workers, each of which printed Python's traceback (most runs, before 2026-11-30).
    run_dir = tmp_path / "run"
    args = ["train", "--nproc", nproc, "--epochs", 50, "--out", run_dir, "--quiet", *NPROC_QUICK]
    process = _start_in_own_group(args)
    try:
        if isinstance(moment, str):
            _child_with_rank(process.pid, rank=0, poll=0.001)
            time.sleep(0.05 if moment == "workers import" else 0)
        else:
            time.sleep(moment)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    said = [line for line in stderr.splitlines() if line.startswith("vitlab:")]
    assert len(said) == 1 and said[0].startswith("vitlab: interrupted"), stderr
    if "--resume" in said[0]:  # only offered for a run that has something to resume
        assert (run_dir / "config.yaml").is_file()


def test_a_ctrl_c_that_went_through_an_exec_still_exits_130(tmp_path):
    # As when Ctrl-C lands while an import defines a dataclass (its methods are exec()'d source text):
    # CPython then ended the process by SIGINT at exit, whatever status vitlab returned.
    (tmp_path / "interrupted_in_exec.py").write_text(
        "import sys\n"
        "import vitlab.cli\n"
        "vitlab.cli.cmd_info = lambda args: exec('raise KeyboardInterrupt')\n"
        "sys.exit(vitlab.cli.main(['info', 'mnist-tiny']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "interrupted_in_exec"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert (result.returncode, result.stderr) == (130, "vitlab: interrupted\n")


@pytest.mark.skipif(sys.platform != "linux", reason="finds the worker through /proc")
def test_a_worker_killed_by_a_signal_is_named_by_the_launcher(tmp_path):
    # As when the kernel's out-of-memory killer ends a worker: the launcher says which and how.
    args = ["train", "--nproc", 2, "--epochs", 50, "--out", tmp_path / "run", "--quiet", *NPROC_QUICK]
    launcher = subprocess.Popen([sys.executable, "-m", "vitlab", *map(str, args)], stderr=subprocess.PIPE, text=True)
    try:
        worker = _child_with_rank(launcher.pid, rank=1)
        time.sleep(2)  # into training
        os.kill(worker, signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode == 2
    assert stderr.strip().splitlines()[-1] == (
        "vitlab: error: training process 1 failed (killed by SIGKILL); its output is above"
    )


def _processes_with_argument(argument: str) -> list[int]:
    """The running processes with `argument` on their command line (an ended one not yet reaped is not)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            running = _stat_fields(pid)[0] != "Z"
            if running and argument.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                found.append(int(pid))
        except OSError:  # gone meanwhile
            continue
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="the kernel's parent-death signal is Linux's")
@pytest.mark.parametrize(
    "how, moment",
    [(signal.SIGKILL, "training"), (signal.SIGKILL, "workers start"), (signal.SIGTERM, "workers start")],
    ids=["SIGKILL-training", "SIGKILL-starting", "SIGTERM-starting"],
)
def test_workers_never_outlive_their_launcher(tmp_path, monkeypatch, how, moment):
    # Workers run in sessions of their own: a launcher killed outright, or one stopped while it was still
    # starting them (before torchrun's agent knew them all), left them training on, unseen.
    run_dir, temp = str(tmp_path / "run"), tmp_path / "temp"
    temp.mkdir()
    args = ["train", "--nproc", 2, "--epochs", 50, "--out", run_dir, "--quiet", *NPROC_QUICK]
    launcher = _start_in_own_group(args, env={"TMPDIR": str(temp)})
    try:
        _child_with_rank(launcher.pid, rank=1 if moment == "training" else 0, poll=0.001)
        time.sleep(2 if moment == "training" else 0)
        os.killpg(launcher.pid, how)
        launcher.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _processes_with_argument(run_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_with_argument(run_dir) == []
        # A launcher killed outright leaves its temporary folder, named by its pid; the next launch removes it.
        if how == signal.SIGKILL:
            left = [p.name for p in temp.glob("vitlab-workers-*")]
            assert len(left) == 1 and left[0].startswith(f"vitlab-workers-{launcher.pid}-"), left
        monkeypatch.setattr(tempfile, "tempdir", str(temp))
        remove_abandoned_worker_folders()
        assert list(temp.glob("vitlab-workers-*")) == []
    finally:
        launcher.kill()
        for pid in _processes_with_argument(run_dir):
            os.kill(pid, signal.SIGKILL)
