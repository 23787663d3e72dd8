import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.helpers import tiny_config
from vitlab.errors import ConfigError
from vitlab.models.flops import forward_flops
from vitlab.models.registry import model_config, preset_names
from vitlab.models.vit import ViT


def test_every_preset_builds_a_valid_config():
    for name in preset_names():
        model_config(name).validate()


def test_classic_variant_strings_decode_to_their_paper_sizes():
    config = model_config("S/16")
    assert (config.embed_dim, config.depth, config.num_heads, config.patch_size, config.img_size) == (
        384,
        12,
        6,
        16,
        224,
    )
    params = sum(p.numel() for p in ViT(model_config("Ti/16", num_classes=1000)).parameters())
    assert params == pytest.approx(5.72e6, rel=0.01)  # DeiT-Ti's published size


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ConfigError, match="mnist-small"):
        model_config("XL/3")


@pytest.mark.parametrize("pool", ["cls", "mean", "map"])
@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("class_token", [False, True])
def test_analytic_flops_match_pytorchs_flop_counter(pool, head, class_token):
    config = tiny_config(pool=pool, head=head, patch_size=4, embed_dim=48, num_heads=3, class_token=class_token)
    model = ViT(config).eval()
    # The counter sees the explicit path's matrix products; it has no formula for the fused CPU
    # kernel (it counts it as zero).
    model.set_attention_kernel("manual")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 1, 28, 28))
    assert forward_flops(config) == counter.get_total_flops()


def test_analytic_flops_count_the_convolutional_stem():
    config = tiny_config(stem="conv", patch_size=4, embed_dim=48, num_heads=3)
    model = ViT(config).eval()
    model.set_attention_kernel("manual")  # as above
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 1, 28, 28))
    assert forward_flops(config) == counter.get_total_flops()
    assert forward_flops(config) > forward_flops(tiny_config(patch_size=4, embed_dim=48, num_heads=3))
