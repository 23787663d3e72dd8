import pytest
import torch

from tests.helpers import tiny_config
from vitlab.explain.attention import attention_stack, head_maps, layer_maps, rollout, rollout_map, to_image_grid
from vitlab.models.vit import ViT


def test_rollout_of_a_hand_computed_two_layer_example():
    a1 = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    a2 = torch.tensor([[1.0, 0.0], [0.4, 0.6]])
    attentions = torch.stack([a1, a2])[:, None, None]  # (layers, batch=1, heads=1, 2, 2)
    # Residual weight 0.5: 0.5*A + 0.5*I, rows already sum to one.
    m1 = torch.tensor([[0.75, 0.25], [0.1, 0.9]])
    m2 = torch.tensor([[1.0, 0.0], [0.2, 0.8]])
    expected = m2 @ m1
    torch.testing.assert_close(rollout(attentions)[0], expected)
    assert expected[1].tolist() == pytest.approx([0.23, 0.77])


def test_rollout_averages_heads_and_renormalises_rows():
    torch.manual_seed(0)
    raw = torch.rand(3, 2, 4, 5, 5)
    attentions = raw / raw.sum(dim=-1, keepdim=True)
    result = rollout(attentions)
    assert result.shape == (2, 5, 5)
    torch.testing.assert_close(result.sum(dim=-1), torch.ones(2, 5))


@pytest.mark.parametrize("pool", ["cls", "mean", "map"])
def test_maps_sum_to_one_per_query_for_every_pooling(pool):
    torch.manual_seed(0)
    model = ViT(tiny_config(pool=pool, depth=3)).eval()
    intermediates = model(torch.randn(2, 1, 28, 28), return_intermediates=True)
    stack = attention_stack(intermediates)
    torch.testing.assert_close(stack.sum(dim=-1), torch.ones(stack.shape[:-1]))
    per_layer = layer_maps(model, intermediates)
    assert per_layer.shape == (3, 2, 16)
    torch.testing.assert_close(per_layer.sum(dim=-1), torch.ones(3, 2))
    heads = head_maps(model, intermediates, layer=1)
    assert heads.shape == (2, 4, 16)
    torch.testing.assert_close(heads.sum(dim=-1), torch.ones(2, 4))
    rolled = rollout_map(model, intermediates)
    assert rolled.shape == (2, 16)
    torch.testing.assert_close(rolled.sum(dim=-1), torch.ones(2))
    assert to_image_grid(rolled, model).shape == (2, 28, 28)


def test_class_token_map_reads_the_class_token_row_without_itself():
    model = ViT(tiny_config(pool="cls", depth=1)).eval()
    intermediates = model(torch.randn(1, 1, 28, 28), return_intermediates=True)
    weights = intermediates["attention_0"].mean(dim=1)[0, 0]  # class token's row, heads averaged
    expected = weights[1:] / weights[1:].sum()
    torch.testing.assert_close(layer_maps(model, intermediates)[0, 0], expected)
