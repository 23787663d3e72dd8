import torch

from vitlab.data.augment import random_affine
from vitlab.data.tensors import batch_indices, normalize, num_batches, to_model_input


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
