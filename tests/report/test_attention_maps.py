import numpy as np
import pytest
from PIL import Image

from tests.helpers import tiny_config
from vitlab.errors import ConfigError
from vitlab.models.registry import build_model, model_config
from vitlab.models.vit import ViT
from vitlab.report.attention_maps import write_attention_maps

METADATA = {"mean": [0.5], "std": [0.25], "class_names": [f"class {i}" for i in range(10)]}


@pytest.fixture
def two_images(tmp_path):
    paths = []
    for index, size in enumerate((28, 40)):  # the second is resized to the model's input
        pixels = np.random.default_rng(index).integers(0, 256, (size, size), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"img{index}.png")
        paths.append(str(tmp_path / f"img{index}.png"))
    return paths


def test_four_figures_per_image_with_the_heads_of_the_layer_asked_for(two_images, tmp_path):
    model = ViT(tiny_config(depth=3)).eval()
    figures = write_attention_maps(model, METADATA, two_images, tmp_path / "maps", layer=-2)
    names = sorted(path.name for path in figures.files)
    expected = [
        f"{i:02d}_img{i}_{kind}.png" for i in range(2) for kind in ("heads_layer1", "input", "layers", "rollout")
    ]
    assert names == sorted(expected)
    assert all(path.stat().st_size > 1000 for path in figures.files)
    assert len(figures.predicted) == 2 and all(name.startswith("class ") for name in figures.predicted)


def test_models_without_attention_and_layers_out_of_range_are_refused(two_images, tmp_path):
    out = tmp_path / "maps"
    with pytest.raises(ConfigError, match="out of range"):
        write_attention_maps(ViT(tiny_config(depth=2)).eval(), METADATA, two_images, out, layer=-3)
    resnet = build_model(model_config("resnet-small", embed_dim=8, depth=1)).eval()
    with pytest.raises(ConfigError, match="no attention"):
        write_attention_maps(resnet, METADATA, two_images, out)
    assert not out.exists()  # refused before anything is written
