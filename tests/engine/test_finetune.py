import pytest
import torch

from tests.helpers import grey_image_folder, tiny_config
from vitlab.engine.checkpoint import RESUME_FORMAT, save_checkpoint, save_tensors
from vitlab.engine.finetune import freeze_until, layer_scale, read_source
from vitlab.engine.train import Trainer, prepare_run_dir
from vitlab.errors import CheckpointError
from vitlab.models.vit import ViT
from vitlab.recipes import resolve_finetune_config

QUICK = ["data.train_subset=600", "data.test_subset=200", "train.batch_size=50", "train.warmup_epochs=0.2"]
INFO = {"class_names": [str(i) for i in range(10)], "mean": [0.1307], "std": [0.3081], "dataset": "mnist"}


@pytest.fixture
def source(tmp_path):
    torch.manual_seed(0)
    model = ViT(tiny_config(num_classes=7))
    torch.nn.init.normal_(model.head.weight)
    save_checkpoint(tmp_path / "source.safetensors", model, INFO | {"class_names": list("abcdefg")})
    return tmp_path / "source.safetensors", model


def test_finetune_starts_from_the_source_weights_with_a_new_head_and_resampled_positions(tmp_path, source):
    path, pretrained = source
    config = resolve_finetune_config(source=str(path), dataset="mnist", img_size=42, epochs=1, overrides=QUICK)
    assert config.model.img_size == 42 and config.model.num_classes == 10 and config.model.embed_dim == 32
    prepare_run_dir(config, tmp_path / "run")
    trainer = Trainer(config, tmp_path / "run")
    model = trainer.model
    torch.testing.assert_close(model.blocks[1].mlp.fc1.weight.cpu(), pretrained.blocks[1].mlp.fc1.weight)
    assert model.pos_embed.shape == (1, 36, 32)  # 6x6 grid at 42 px, resampled from 4x4
    assert torch.count_nonzero(model.head.weight) == 0  # a fresh head for the new classes
    result = trainer.run()
    assert result.final.accuracy > 0.0


def test_finetune_takes_the_data_sets_augmentation_and_keeps_its_own_training_settings(tmp_path, source):
    path, _ = source
    for name in ("cat", "dog"):
        (tmp_path / "photos" / name).mkdir(parents=True)
    photos = resolve_finetune_config(source=str(path), dataset=str(tmp_path / "photos"))
    digits = resolve_finetune_config(source=str(path), dataset="mnist")
    assert photos.data.hflip and not photos.data.affine and photos.data.crop_padding == 4  # the folder recipe's
    assert digits.data.affine and not digits.data.hflip
    assert photos.train.lr == digits.train.lr  # training settings: fine-tuning's own, whatever the data
    assert photos.model.num_classes == 2 and photos.model.embed_dim == 32  # the source's model, a new head


def test_finetune_on_the_source_folder_holds_out_the_images_the_source_held_out(tmp_path):
    # Another split of the same folder would test on images the source model trained on.
    photos, others = grey_image_folder(tmp_path / "photos"), grey_image_folder(tmp_path / "others")
    info = INFO | {"class_names": ["a", "b"], "dataset": str(photos), "test_split": {"fraction": 0.3, "seed": 5}}
    save_checkpoint(tmp_path / "source.safetensors", ViT(tiny_config(num_classes=2)), info)
    source = str(tmp_path / "source.safetensors")
    same = resolve_finetune_config(source=source, dataset=str(photos))
    assert (same.data.test_fraction, same.train.seed) == (0.3, 5)
    chosen = resolve_finetune_config(source=source, dataset=str(photos), seed=1, overrides=["test_fraction=0.5"])
    assert (chosen.data.test_fraction, chosen.train.seed) == (0.5, 1)  # what the user says wins
    other = resolve_finetune_config(source=source, dataset=str(others))
    assert (other.data.test_fraction, other.train.seed) == (0.2, 0)


def test_freezing_and_layer_decay_shape_the_optimiser(tmp_path, source):
    path, _ = source
    config = resolve_finetune_config(
        source=str(path), dataset="mnist", freeze_until=1, layer_decay=0.5, epochs=1, overrides=QUICK
    )
    prepare_run_dir(config, tmp_path / "run")
    trainer = Trainer(config, tmp_path / "run")
    frozen = {name for name, p in trainer.model.named_parameters() if not p.requires_grad}
    assert "patch_embed.proj.weight" in frozen and "blocks.0.attn.qkv.weight" in frozen
    assert "blocks.1.attn.qkv.weight" not in frozen and "head.weight" not in frozen
    scales = {group["lr_scale"] for group in trainer.optimizer.param_groups}
    assert scales == {1.0, 0.5}  # block 1 of depth 2 gets 0.5^1; head and final norm 1
    before = trainer.model.blocks[0].attn.qkv.weight.clone()
    trainer.run()
    torch.testing.assert_close(trainer.model.blocks[0].attn.qkv.weight, before)


def test_layer_scale_formula():
    assert layer_scale("blocks.3.mlp.fc1.weight", 4, 0.5) == 0.5
    assert layer_scale("blocks.0.mlp.fc1.weight", 4, 0.5) == 0.5**4
    assert layer_scale("patch_embed.proj.weight", 4, 0.5) == 0.5**5
    assert layer_scale("head.weight", 4, 0.5) == 1.0
    model = ViT(tiny_config())
    assert freeze_until(model, 0) == 0


def test_source_of_another_architecture_is_refused(tmp_path, source):
    path, _ = source
    config = resolve_finetune_config(source=str(path), dataset="mnist", epochs=1, overrides=QUICK + ["model.depth=3"])
    prepare_run_dir(config, tmp_path / "run")
    with pytest.raises(CheckpointError, match="does not fit"):
        Trainer(config, tmp_path / "run")


def test_a_runs_resume_state_is_named_as_such_not_read_as_another_librarys_weights(tmp_path, source):
    _, model = source
    save_tensors(tmp_path / "resume.safetensors", model.state_dict(), {}, kind=RESUME_FORMAT)
    with pytest.raises(CheckpointError, match="is a run's resume state"):  # was: not a timm state dict
        read_source(tmp_path / "resume.safetensors")
