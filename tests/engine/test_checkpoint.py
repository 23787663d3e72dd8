import json

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import tiny_config
from vitlab import atomic
from vitlab.engine import checkpoint as ckpt
from vitlab.engine.checkpoint import load_checkpoint, save_checkpoint
from vitlab.errors import CheckpointError
from vitlab.models.vit import ViT

INFO = {"class_names": list("abcdefghij"), "mean": [0.5], "std": [0.5], "dataset": "mnist"}


def test_save_and_load_restore_weights_and_metadata(tmp_path):
    model = ViT(tiny_config(pool="map", posenc="sincos2d")).eval()
    torch.nn.init.normal_(model.head.weight)
    save_checkpoint(tmp_path / "m.safetensors", model, INFO)
    loaded, metadata = load_checkpoint(tmp_path / "m.safetensors")
    images = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)
    assert metadata["class_names"] == INFO["class_names"]
    sidecar = json.loads((tmp_path / "m.json").read_text())
    assert sidecar["model"]["pool"] == "map"


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    model = ViT(tiny_config())
    save_checkpoint(tmp_path / "m.safetensors", model, INFO)
    tensors, metadata = ckpt.load_tensors(tmp_path / "m.safetensors")
    metadata.pop("format")
    metadata["model"]["embed_dim"] = 64  # claims another architecture than the weights hold
    ckpt.save_tensors(tmp_path / "other.safetensors", tensors, metadata)
    with pytest.raises(CheckpointError, match="weights do not match its config"):
        load_checkpoint(tmp_path / "other.safetensors")


def test_non_checkpoint_files_are_refused(tmp_path):
    (tmp_path / "text.safetensors").write_text("not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(tmp_path / "text.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.safetensors")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoints"):
        load_checkpoint(tmp_path / "empty_run")
    ckpt.save_tensors(tmp_path / "resume.safetensors", {"w": torch.zeros(1)}, {}, kind=ckpt.RESUME_FORMAT)
    with pytest.raises(CheckpointError, match=r"a run's resume state \(for vitlab train --resume\); use the run"):
        load_checkpoint(tmp_path / "resume.safetensors")
    ckpt.save_tensors(tmp_path / "other.safetensors", {"w": torch.zeros(1)}, {}, kind="something-else")
    with pytest.raises(CheckpointError, match="is a vitlab something-else file, not a vitlab-checkpoint file"):
        load_checkpoint(tmp_path / "other.safetensors")
    save_file({"w": torch.zeros(1)}, tmp_path / "foreign.safetensors")  # another library's weights
    with pytest.raises(ckpt.ForeignFileError, match="a safetensors file but not a vitlab-checkpoint file"):
        load_checkpoint(tmp_path / "foreign.safetensors")


def test_truncated_checkpoint_is_refused(tmp_path):
    save_checkpoint(tmp_path / "m.safetensors", ViT(tiny_config()), INFO)
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(tmp_path / "m.safetensors")


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    first = ViT(tiny_config())
    save_checkpoint(path, first, INFO)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C while the new file was being written

    monkeypatch.setattr(atomic.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, ViT(tiny_config(depth=3)), INFO)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    load_checkpoint(path)


def test_a_folder_that_refuses_new_files_is_named_in_the_error_not_the_temporary_file(tmp_path, monkeypatch):
    def refuse(**kwargs):
        raise PermissionError(13, "Permission denied", str(kwargs["dir"] / ".last.safetensors.x1y2.tmp"))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as refused:
        save_checkpoint(tmp_path / "last.safetensors", ViT(tiny_config()), INFO)
    assert refused.value.filename == str(tmp_path / "last.safetensors")
