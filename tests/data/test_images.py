import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data.images import load_image
from vitlab.errors import ImageError


@pytest.mark.parametrize(
    "mode,fmt",
    [("L", "png"), ("RGB", "jpeg"), ("RGBA", "png"), ("P", "png"), ("I;16", "png"), ("1", "bmp"), ("RGB", "webp")],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_any_mode_and_size_becomes_the_models_input(tmp_path, mode, fmt, channels):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (45, 61), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 255, (45, 61, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / f"img.{fmt}"
    image.save(path)
    tensor = load_image(path, channels=channels, size=28)
    assert tensor.shape == (channels, 28, 28)
    assert tensor.dtype == torch.uint8


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((28, 28), 65535 // 2, dtype=np.uint16)).save(tmp_path / "grey16.png")
    assert abs(int(load_image(tmp_path / "grey16.png", 1, 28)[0, 0, 0]) - 128) <= 1


def test_float_images_in_zero_to_one_are_scaled_to_that_range(tmp_path):
    Image.fromarray(np.full((28, 28), 0.5, dtype=np.float32), mode="F").save(tmp_path / "scan.tiff")
    assert abs(int(load_image(tmp_path / "scan.tiff", 1, 28)[0, 0, 0]) - 128) <= 1
    Image.fromarray(np.full((28, 28), 127.0, dtype=np.float32), mode="F").save(tmp_path / "grey.tiff")
    assert int(load_image(tmp_path / "grey.tiff", 1, 28)[0, 0, 0]) == 127


def test_transparent_pixels_become_black_background(tmp_path):
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white, but fully transparent except one square
    rgba[10:18, 10:18, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "digit.png")
    tensor = load_image(tmp_path / "digit.png", 1, 28)
    assert tensor[0, 0, 0] == 0 and tensor[0, 14, 14] == 255


def test_text_file_named_png_is_refused(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "notes.png", 1, 28)


def test_empty_missing_and_truncated_images_are_refused(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "empty.png", 1, 28)
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "absent.png", 1, 28)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(tmp_path / "cut.png", 1, 28)


def test_a_large_image_decodes_without_pillows_warning_and_a_bomb_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow warns from here and refuses from twice it
    Image.new("L", (40, 30), 200).save(tmp_path / "large.png")  # 1,200 pixels
    Image.new("L", (50, 50), 200).save(tmp_path / "bomb.png")  # 2,500 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning printed under the command's output would fail here
        assert load_image(tmp_path / "large.png", 1, 8).shape == (1, 8, 8)
    with pytest.raises(ImageError, match=r"bomb.png is too large to decode safely \(Image size \(2500 pixels\)"):
        load_image(tmp_path / "bomb.png", 1, 8)
