import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from vitlab.config import DataConfig
from vitlab.data.augment import (
    augment_batch,
    mix_batch,
    randaugment,
    random_affine,
    random_crop,
    random_erasing,
    random_flip,
)
from vitlab.data.tensors import batch_indices, normalize, num_batches, to_device, to_model_input
from vitlab.errors import ConfigError
from vitlab.recipes import resolve_run_config


def test_identity_affine_leaves_images_unchanged():
    images = torch.rand(4, 1, 28, 28)
    out = random_affine(images, degrees=0.0, scale=(1.0, 1.0), translate=0.0)
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_affine_is_repeatable_with_a_seeded_generator_and_varies_per_image():
    images = torch.rand(1, 1, 28, 28).repeat(6, 1, 1, 1)
    draw = lambda: random_affine(  # noqa: E731
        images, degrees=15, scale=(0.9, 1.1), translate=0.1, generator=torch.Generator().manual_seed(3)
    )
    first, second = draw(), draw()
    torch.testing.assert_close(first, second)
    assert not torch.allclose(first[0], first[1])


@pytest.mark.parametrize("shape", [(16, 1, 28, 20), (8, 3, 32, 32)])
def test_affine_samples_the_grid_torchs_affine_grid_builds_from_the_same_draws(shape):
    images = torch.rand(*shape)
    out = random_affine(images, degrees=10, scale=(0.9, 1.1), translate=0.1, generator=torch.Generator().manual_seed(3))
    draws = torch.Generator().manual_seed(3)  # the same three draws, in random_affine's order
    angle = math.radians(10) * (2 * torch.rand(shape[0], generator=draws) - 1)
    inverse_scale = 1 / (0.9 + 0.2 * torch.rand(shape[0], generator=draws))
    shift = 0.2 * (2 * torch.rand(shape[0], 2, generator=draws) - 1)
    cos, sin = torch.cos(angle) * inverse_scale, torch.sin(angle) * inverse_scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(shape), align_corners=False)
    torch.testing.assert_close(out, F.grid_sample(images, grid, align_corners=False), atol=1e-5, rtol=0)


def test_pure_shift_moves_content_by_the_expected_pixels():
    images = torch.zeros(1, 1, 28, 28)
    images[0, 0, 10:14, 10:14] = 1.0
    out = random_affine(images, degrees=0, scale=(1, 1), translate=0.0)
    assert out[0, 0, 10:14, 10:14].min() > 0.99


def test_normalize_uses_per_channel_statistics():
    images = torch.full((2, 1, 4, 4), 255, dtype=torch.uint8)
    torch.testing.assert_close(normalize(images, [0.5], [0.25]), torch.full((2, 1, 4, 4), 2.0))


def test_model_input_is_resized_and_channels_matched():
    images = torch.randint(0, 255, (3, 1, 28, 28), dtype=torch.uint8)
    out = to_model_input(images, [0.1307], [0.3081], size=32, channels=3)
    assert out.shape == (3, 3, 32, 32)
    torch.testing.assert_close(out[:, 0], out[:, 2])


def test_batches_cover_each_example_once_per_pass():
    seen = torch.cat(list(batch_indices(103, 10, shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert sorted(seen.tolist()) == list(range(103))
    assert num_batches(103, 10) == 11 and num_batches(103, 10, drop_last=True) == 10
    assert sum(len(b) for b in batch_indices(103, 10, shuffle=False, drop_last=True)) == 100


def test_random_crop_shifts_by_whole_pixels_within_the_padding():
    images = torch.zeros(64, 1, 10, 10)
    images[:, 0, 5, 5] = 1.0
    out = random_crop(images, 2, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    positions = {tuple(torch.nonzero(img[0]).flatten().tolist()) for img in out}
    assert positions <= {(r, c) for r in range(3, 8) for c in range(3, 8)}  # moved by at most 2
    assert len(positions) > 5 and torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(64))


def test_flip_mirrors_about_half_the_images():
    images = torch.arange(8.0).repeat(400, 1, 8, 1)
    out = random_flip(images, generator=torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 7).float().mean().item()
    assert 0.4 < flipped < 0.6
    assert torch.equal(out[out[:, 0, 0, 0] == 7], images.flip(-1)[out[:, 0, 0, 0] == 7])


def test_random_erasing_zeroes_one_rectangle_when_applied():
    images = torch.ones(32, 1, 16, 16)
    out = random_erasing(images, 1.0, generator=torch.Generator().manual_seed(0))
    for img in out[:, 0]:
        rows, cols = torch.nonzero(img == 0, as_tuple=True)
        assert len(rows) > 0
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == len(rows)  # the erased pixels form one filled rectangle
    assert torch.equal(random_erasing(images, 0.0), images)


@pytest.mark.parametrize("mixup,cutmix", [(0.8, 0.0), (0.0, 1.0)])
def test_mixup_and_cutmix_mix_labels_in_the_proportion_of_pixels(mixup, cutmix):
    torch.manual_seed(0)
    images = torch.cat([torch.zeros(1, 1, 10, 10), torch.ones(1, 1, 10, 10)])
    labels = torch.tensor([0, 1])
    mixed, targets = mix_batch(images, labels, 3, mixup_alpha=mixup, cutmix_alpha=cutmix)
    # Image 0 (zeros) takes a share of image 1 (ones): its mean is exactly the weight of label 1.
    assert targets[0, 1].item() == pytest.approx(mixed[0].mean().item(), abs=1e-6)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(2))
    assert targets[0, 2] == 0


def test_augment_batch_follows_the_config_switches():
    images = torch.rand(8, 3, 12, 12)
    labels = torch.arange(8) % 4
    off = DataConfig(augment=False, mixup_alpha=0.8)
    same, targets = augment_batch(images, labels, 4, off, 0.0, None)
    assert torch.equal(same, images) and torch.equal(targets, labels)
    on = DataConfig(affine=False, hflip=True, crop_padding=2, random_erasing=0.5, cutmix_alpha=1.0)
    changed, soft = augment_batch(images, labels, 4, on, 0.1, torch.Generator().manual_seed(0))
    assert changed.shape == images.shape and soft.shape == (8, 4) and soft.dtype == torch.float32


def test_randaugment_runs_through_kornia_on_colour_images():
    images = torch.rand(4, 3, 16, 16)
    out = randaugment(images)
    assert out.shape == (4, 3, 16, 16) and out.min() >= 0 and out.max() <= 1
    torch.manual_seed(0)
    first, second = randaugment(images), randaugment(images)  # a new draw every batch
    torch.manual_seed(0)
    assert not torch.equal(first, second) and torch.equal(randaugment(images), first)  # the seed repeats it
    with pytest.raises(ConfigError, match="3-channel"):
        randaugment(torch.rand(4, 1, 16, 16))


def test_a_randaugment_run_that_cannot_work_is_refused_before_it_starts(monkeypatch):
    with pytest.raises(ConfigError, match="3-channel"):
        resolve_run_config(dataset="mnist", overrides=["data.randaugment=true"])
    assert resolve_run_config(dataset="cifar10", overrides=["data.randaugment=true"]).data.randaugment
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "kornia" else real_find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match="needs kornia; run: pip install 'vitlab\\[augment\\]'"):
        resolve_run_config(dataset="cifar10", overrides=["data.randaugment=true"])


def test_small_tensors_go_to_a_gpu_through_pinned_memory_without_waiting(monkeypatch):
    # Copied from ordinary memory, PyTorch waits for the GPU's queued work first: every step would wait.
    # Seen as a CUDA device on this machine: the tensor is pinned, then copied with non_blocking=True.
    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    monkeypatch.setattr(
        torch.Tensor, "to", lambda self, device, **options: calls.append((str(device), options)) or self
    )
    draws = torch.rand(4)
    assert to_device(draws, torch.device("cuda")) is draws
    assert calls == ["pin", ("cuda", {"non_blocking": True})]
    monkeypatch.undo()
    assert to_device(draws, "cpu") is draws  # on the CPU a plain .to, a no-op
