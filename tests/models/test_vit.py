import itertools
import math
import warnings
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_config
from vitlab.config import POOL_CHOICES, POSENC_CHOICES
from vitlab.errors import ConfigError
from vitlab.models import vit as vit_module
from vitlab.models.vit import (
    FUSED_CPU_MIN_KEYS,
    FUSED_CPU_MIN_KEYS_X_HEAD_DIM,
    SelfAttention,
    ViT,
    attend,
    linear_after_norm,
    softmax_rows,
)


def reference_self_attention(x, w_qkv, b_qkv, w_proj, b_proj, num_heads):
    """Multi-head self-attention written out element by element in float64, one head at a time."""
    batch, tokens, dim = x.shape
    head_dim = dim // num_heads
    out = torch.zeros(batch, tokens, dim, dtype=torch.float64)
    for b in range(batch):
        qkv = x[b] @ w_qkv.T + b_qkv  # (tokens, 3*dim)
        q_all, k_all, v_all = qkv[:, :dim], qkv[:, dim : 2 * dim], qkv[:, 2 * dim :]
        heads = []
        for h in range(num_heads):
            cols = slice(h * head_dim, (h + 1) * head_dim)
            q, k, v = q_all[:, cols], k_all[:, cols], v_all[:, cols]
            scores = torch.zeros(tokens, tokens, dtype=torch.float64)
            for i in range(tokens):
                for j in range(tokens):
                    scores[i, j] = (q[i] * k[j]).sum() / math.sqrt(head_dim)
            weights = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
            weights = weights / weights.sum(dim=1, keepdim=True)
            heads.append(weights @ v)
        out[b] = torch.cat(heads, dim=1) @ w_proj.T + b_proj
    return out


@pytest.mark.parametrize("kernel", ["manual", "sdpa"])
def test_self_attention_matches_float64_reference(kernel):
    torch.manual_seed(0)
    config = tiny_config(embed_dim=12, num_heads=3)
    layer = SelfAttention(config).double()
    for param in layer.parameters():
        torch.nn.init.normal_(param, std=0.5)
    layer.kernel = kernel
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    expected = reference_self_attention(
        x, layer.qkv.weight, layer.qkv.bias, layer.proj.weight, layer.proj.bias, num_heads=3
    )
    actual, _ = layer(x)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_attention_weights_are_a_softmax_over_keys():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, 8) for _ in range(3))
    out, weights = attend(q, k, v, kernel="manual", need_weights=True)
    assert weights.shape == (2, 3, 4, 4)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 3, 4))
    torch.testing.assert_close(out, weights @ v)


def test_compiled_explicit_attention_takes_keys_major_scores_with_the_same_values_and_gradients(monkeypatch):
    # Under torch.compile on CPU the scores are laid out (batch, heads, keys, queries) and the softmax
    # runs over keys in dimension -2 (inductor vectorises it across queries). A recording backend runs
    # the traced graph as it is, so its values and gradients can be checked against the eager path.
    graphs = []

    def record(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    def softmax_dims(graph_module):
        return [node.kwargs["dim"] for node in graph_module.graph.nodes if node.target == "softmax"]

    torch._dynamo.reset()
    compiled_attend = torch.compile(
        lambda q, k, v: attend(q, k, v, kernel="manual", need_weights=True), backend=record, fullgraph=True
    )
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out, weights = compiled_attend(q, k, v)
    assert softmax_dims(graphs[0]) == [-2]
    expected_out, expected_weights = attend(q, k, v, kernel="manual", need_weights=True)
    torch.testing.assert_close(weights, expected_weights, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(out)
    gradients = torch.autograd.grad(out, (q, k, v), upstream)
    expected_gradients = torch.autograd.grad(expected_out, (q, k, v), upstream)
    for gradient, expected in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(gradient, expected, rtol=1e-12, atol=1e-12)
    # The switch benchmarks/compiled_attention.py times the row layout with: a new graph, in rows.
    monkeypatch.setattr(vit_module, "COMPILED_CPU_KEYS_MAJOR_SCORES", False)
    compiled_attend(q, k, v)
    assert len(graphs) == 2 and softmax_dims(graphs[1]) == [-1]
    torch._dynamo.reset()


def _bf16_attention_with_fp32_softmax(q, k, v):
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype) @ v


@pytest.mark.parametrize("tokens", [20, 40])  # softmax_rows upcasts rows shorter than 32, not longer ones
def test_explicit_attention_in_bf16_is_as_exact_as_an_fp32_softmax(tokens):
    # The bf16 path rounds the softmax weights once, as the product with V needs them rounded
    # anyway: its error against fp32, forward and backward, must be no larger than that of a
    # softmax done in fp32 and cast.
    torch.manual_seed(0)
    inputs32 = [(torch.randn(4, 3, tokens, 16) * 2).requires_grad_() for _ in range(3)]
    inputs16 = [t.detach().bfloat16().requires_grad_() for t in inputs32]
    inputs_fp32_softmax = [t.detach().bfloat16().requires_grad_() for t in inputs32]
    upstream = torch.randn(4, 3, tokens, 16)
    out32, _ = attend(*inputs32, kernel="manual")
    out16, _ = attend(*inputs16, kernel="manual")
    out_fp32_softmax = _bf16_attention_with_fp32_softmax(*inputs_fp32_softmax)
    assert out16.dtype == torch.bfloat16
    for out, upstream_grad in (
        (out32, upstream),
        (out16, upstream.bfloat16()),
        (out_fp32_softmax, upstream.bfloat16()),
    ):
        out.backward(upstream_grad)

    def error(low: torch.Tensor, full: torch.Tensor) -> float:
        return float((low.detach().float() - full.detach()).abs().max() / full.detach().abs().max())

    assert error(out16, out32) <= 1.5 * error(out_fp32_softmax, out32) + 1e-3
    for low, alternative, full in zip(inputs16, inputs_fp32_softmax, inputs32):
        assert error(low.grad, full.grad) <= 1.5 * error(alternative.grad, full.grad) + 1e-3


@pytest.mark.parametrize("tokens", [17, 50])
def test_softmax_rows_rounds_the_fp32_softmax_once_for_short_and_long_rows(tokens):
    scores = (torch.randn(64, tokens, tokens) * 3).bfloat16().float()  # exact in bf16
    expected = scores.softmax(dim=-1)
    weights = softmax_rows(scores.bfloat16())
    assert weights.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits: one rounding of the fp32 result is within 2^-8 relative.
    assert torch.allclose(weights.float(), expected, rtol=2**-8, atol=1e-6)
    assert torch.equal(softmax_rows(scores), expected)


@pytest.mark.parametrize("pool,posenc", list(itertools.product(POOL_CHOICES, POSENC_CHOICES)))
def test_every_pooling_and_position_encoding_gives_logits_of_the_right_shape(pool, posenc):
    model = ViT(tiny_config(pool=pool, posenc=posenc)).eval()
    images = torch.randn(3, 1, 28, 28)
    out = model(images, return_intermediates=True)
    tokens = 16 + (1 if pool == "cls" else 0)
    assert out["logits"].shape == (3, 10)
    assert out["patches"].shape == (3, 16, 32)
    assert out["with_posenc"].shape == (3, tokens, 32)
    assert out["pooled"].shape == (3, 32)
    for layer in range(2):
        assert out[f"block_{layer}"].shape == (3, tokens, 32)
        assert out[f"attention_{layer}"].shape == (3, 4, tokens, tokens)
    if pool == "map":
        assert out["attention_pool"].shape == (3, 4, 1, tokens)


def _permute_patches(images: torch.Tensor, patch: int, order: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = images.shape
    grid = height // patch
    blocks = images.reshape(batch, channels, grid, patch, grid, patch).permute(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(batch, grid * grid, channels, patch, patch)[:, order]
    blocks = blocks.reshape(batch, grid, grid, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return blocks.reshape(batch, channels, height, width)


def test_without_position_encoding_mean_pooling_ignores_patch_order():
    torch.manual_seed(0)
    model = ViT(tiny_config(posenc="none", pool="mean")).double().eval()
    for param in model.head.parameters():  # the head starts at zero; give it weights to compare
        torch.nn.init.normal_(param)
    images = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    shuffled = _permute_patches(images, 7, torch.randperm(16))
    assert not torch.equal(images, shuffled)
    torch.testing.assert_close(model(shuffled), model(images), rtol=1e-9, atol=1e-9)


def test_with_position_encoding_patch_order_matters():
    torch.manual_seed(0)
    model = ViT(tiny_config(posenc="sincos2d", pool="mean")).double().eval()
    torch.nn.init.normal_(model.head.weight)
    images = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    shuffled = _permute_patches(images, 7, torch.randperm(16))
    assert not torch.allclose(model(shuffled), model(images))


@pytest.mark.parametrize("pool", POOL_CHOICES)
def test_intermediates_match_the_plain_forward(pool):
    torch.manual_seed(0)
    model = ViT(tiny_config(pool=pool)).eval()
    torch.nn.init.normal_(model.head.weight)
    images = torch.randn(4, 1, 28, 28)
    out = model(images, return_intermediates=True)
    torch.testing.assert_close(out["logits"], model(images))
    tokens = model.forward_features(images)
    torch.testing.assert_close(out["tokens"], tokens)
    torch.testing.assert_close(out["pooled"], model.pool(tokens))
    torch.testing.assert_close(out["logits"], model.forward_head(model.pool(tokens)))


@pytest.mark.parametrize("kernel", ["manual", "sdpa"])
def test_class_token_only_last_block_gives_the_same_logits_and_gradients(kernel):
    torch.manual_seed(0)
    # float64, so that the two orders of summation agree to the default tolerance; no dropout.
    model = ViT(tiny_config(pool="cls", depth=3)).double().train()
    model.set_attention_kernel(kernel)
    torch.nn.init.normal_(model.head.weight)
    images = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    assert model.forward_features(images, class_token_only=True).shape == (4, 1, 32)

    def loss_and_grads(logits):
        model.zero_grad()
        loss = logits.square().sum()
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    full_loss, full_grads = loss_and_grads(model.forward_head(model.pool(model.forward_features(images))))
    loss, grads = loss_and_grads(model(images))  # the logits path takes class_token_only
    torch.testing.assert_close(loss, full_loss)
    for name, grad in full_grads.items():
        torch.testing.assert_close(grads[name], grad, msg=name)
    with pytest.raises(ValueError, match="class token"):
        ViT(tiny_config(pool="mean")).forward_features(images.float(), class_token_only=True)


def graph_ops(tensor: torch.Tensor) -> set[str]:
    """Names of every autograd node that produced `tensor`."""
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node.name() not in seen:
            seen.add(node.name())
            stack.extend(next_node for next_node, _ in node.next_functions)
    return seen


@pytest.mark.parametrize("with_bias", [True, False])
def test_norm_folded_into_the_next_linear_gives_the_same_values_and_gradients(with_bias):
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(8, eps=1e-6).double()
    linear = torch.nn.Linear(8, 12, bias=with_bias).double()
    for parameter in norm.parameters():  # a scale and shift far from the initial ones and zeros
        torch.nn.init.normal_(parameter)
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 5, 12, dtype=torch.float64)
    inputs = [x, *norm.parameters(), *linear.parameters()]

    plain = linear(norm(x))
    folded = linear_after_norm(x, norm, linear)
    assert ("AddmvBackward0" if with_bias else "MvBackward0") in graph_ops(folded)  # the folded path ran
    torch.testing.assert_close(folded, plain)
    for got, expected in zip(
        torch.autograd.grad(folded, inputs, upstream), torch.autograd.grad(plain, inputs, upstream)
    ):
        torch.testing.assert_close(got, expected)
    with torch.no_grad():
        torch.testing.assert_close(linear_after_norm(x, norm, linear), plain)


def test_fused_and_explicit_attention_kernels_agree():
    torch.manual_seed(0)
    model = ViT(tiny_config(pool="map")).eval()
    torch.nn.init.normal_(model.head.weight)
    images = torch.randn(4, 1, 28, 28)
    model.set_attention_kernel("manual")
    explicit = model(images)
    model.set_attention_kernel("sdpa")
    torch.testing.assert_close(model(images), explicit, rtol=1e-5, atol=1e-5)
    # Asking for intermediates still yields attention weights while the fused kernel is selected.
    assert model(images, return_intermediates=True)["attention_0"].shape == (4, 4, 16, 16)


def count_fused_calls(monkeypatch) -> list[int]:
    """Count calls of PyTorch's fused attention kernel from here on (one list entry per call)."""
    calls: list[int] = []
    fused = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    return calls


def test_auto_attention_on_cpu_is_fused_for_one_image_long_rows_and_wide_heads_never_for_bf16_training(monkeypatch):
    monkeypatch.setattr(vit_module, "cpu_has_amx", lambda: True)  # bf16 inference follows the fp32 rule there
    calls = count_fused_calls(monkeypatch)
    # Two blocks and the attention pool: three attention calls a pass.
    narrow = ViT(tiny_config(pool="map", embed_dim=32, num_heads=4, img_size=56))  # 64 keys x head size 8
    wide = ViT(tiny_config(pool="map", embed_dim=256, num_heads=4, img_size=56))  # 64 keys x head size 64
    long = ViT(tiny_config(pool="map", embed_dim=32, num_heads=4, img_size=84))  # 144 keys x head size 8
    one, batch = torch.randn(1, 1, 56, 56), torch.randn(4, 1, 56, 56)
    assert 64 * 8 < FUSED_CPU_MIN_KEYS_X_HEAD_DIM <= 64 * 64 and 64 < FUSED_CPU_MIN_KEYS <= 144 < 144 * 8
    with torch.no_grad():
        narrow(batch)
    assert len(calls) == 0
    narrow(batch).sum().backward()
    assert len(calls) == 0
    long(torch.randn(4, 1, 84, 84)).sum().backward()
    assert len(calls) == 3
    calls.clear()
    with torch.no_grad():
        narrow(one)  # a single image: fewer ops is what counts
    assert len(calls) == 3
    wide(batch).sum().backward()
    with torch.no_grad():
        wide(batch)
    assert len(calls) == 9
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the fused kernel's bf16 backward is slow on CPU
        wide(batch).float().sum().backward()
        long(torch.randn(4, 1, 84, 84)).float().sum().backward()
        narrow(one).float().sum().backward()
    assert len(calls) == 9
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():  # no backward: the fp32 rule again
        narrow(batch)
        assert len(calls) == 9
        wide(batch)
        long(torch.randn(4, 1, 84, 84))
        narrow(one)
    assert len(calls) == 18
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for parameter in wide.parameters():
            parameter.requires_grad_(False)
        wide(batch)  # nothing for autograd to go back through: inference too
        assert len(calls) == 21
    calls.clear()
    narrow.set_attention_kernel("sdpa")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        narrow(batch)
    assert len(calls) == 3
    wide.set_attention_kernel("manual")
    with torch.no_grad():
        wide(one)
    assert len(calls) == 3
    wide.set_attention_kernel("auto")
    with torch.no_grad():
        wide(batch, return_intermediates=True)  # attention weights need the explicit path
    assert len(calls) == 3


def test_bf16_inference_without_amx_stays_explicit_for_batches_up_to_the_score_cap(monkeypatch):
    monkeypatch.setattr(vit_module, "cpu_has_amx", lambda: False)
    calls = count_fused_calls(monkeypatch)
    # Two blocks and the attention pool: three attention calls a pass; the pool has one query.
    wide = ViT(tiny_config(pool="map", embed_dim=256, num_heads=4, img_size=56)).eval()  # 64 keys x head size 64
    long = ViT(tiny_config(pool="map", embed_dim=32, num_heads=4, img_size=84)).eval()  # 144 keys x head size 8
    batch = torch.randn(4, 1, 56, 56)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        wide(batch)
        long(torch.randn(4, 1, 84, 84))
    assert len(calls) == 0
    with torch.no_grad():
        wide(batch)  # fp32 keeps its rule
    assert len(calls) == 3
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        wide(batch[:1])  # a single image still takes the fused kernel
    assert len(calls) == 6
    # A cap under the blocks' 4 images x 4 heads x 64 queries x 64 keys and over the pool's single query.
    monkeypatch.setattr(vit_module, "EXPLICIT_BF16_MAX_SCORES", 4 * 4 * 60 * 60)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        wide(batch)
    assert len(calls) == 8


def test_cpu_has_amx_agrees_with_the_cpu_flags_linux_lists():
    cpuinfo = Path("/proc/cpuinfo")
    has_amx = vit_module.cpu_has_amx()
    assert isinstance(has_amx, bool)
    if cpuinfo.exists():
        assert has_amx == ("amx_tile" in cpuinfo.read_text().split())


def test_torch_compile_traces_bf16_inference_without_warnings():
    # The bf16 inference rule asks cpu_has_amx; torch.compile warned about tracing a cached function there.
    model = ViT(tiny_config()).eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        warnings.simplefilter("always")
        compiled(torch.randn(4, 1, 28, 28))
    torch._dynamo.reset()
    assert [str(warning.message) for warning in caught] == []


def test_predict_proba_is_a_distribution():
    model = ViT(tiny_config())
    torch.nn.init.normal_(model.head.weight)
    probs = model.predict_proba(torch.randn(5, 1, 28, 28))
    assert probs.shape == (5, 10)
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5))


def test_zero_initialised_head_starts_at_uniform_prediction():
    probs = ViT(tiny_config()).predict_proba(torch.randn(2, 1, 28, 28))
    torch.testing.assert_close(probs, torch.full((2, 10), 0.1))


def test_image_not_a_multiple_of_the_patch_is_padded_when_allowed():
    model = ViT(tiny_config(img_size=30, pad_to_patch=True)).eval()
    out = model(torch.randn(2, 1, 30, 30), return_intermediates=True)
    assert out["patches"].shape[1] == 25  # ceil(30 / 7) = 5 per side, never cropped to 4
    with pytest.raises(ConfigError, match="not a multiple"):
        ViT(tiny_config(img_size=30))


def test_conv_stem_gives_the_patch_grid_and_sees_across_patch_borders():
    config = tiny_config(stem="conv", patch_size=4, img_size=30, pad_to_patch=True, embed_dim=32, num_heads=2)
    model = ViT(config).eval()
    convs = [m for m in model.patch_embed.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [(1, 16, 2), (16, 32, 2), (32, 32, 1)]
    images = torch.randn(2, 1, 30, 30)
    out = model(images, return_intermediates=True)
    assert out["patches"].shape == (2, 64, 32)  # ceil(30 / 4) = 8 per side, like the patch embedding
    # Changing one pixel on the border of two patches moves both tokens: the receptive fields overlap,
    # which a plain patch embedding (each token sees only its own patch) never does.
    shifted = images.clone()
    shifted[:, :, 3, 3] += 10.0  # the last pixel of patch (0, 0), next to patch (1, 1)
    moved = (model(shifted, return_intermediates=True)["patches"] - out["patches"]).abs().sum(-1)[0]
    assert moved[0] > 0 and moved[9] > 0
    assert torch.isfinite(model(images)).all()


def test_mlp_head_and_stochastic_depth():
    torch.manual_seed(0)
    model = ViT(tiny_config(head="mlp", head_hidden_dim=16, drop_path=0.5, dropout=0.1))
    images = torch.randn(8, 1, 28, 28)
    torch.nn.init.normal_(model.head[-1].weight)
    model.train()
    assert not torch.allclose(model(images), model(images))  # random drops differ between calls
    model.eval()
    torch.testing.assert_close(model(images), model(images))


def test_dropout_modules_only_where_dropout_is_asked_for_and_checkpoints_alike():
    torch.manual_seed(0)
    plain, dropping = ViT(tiny_config(dropout=0.0)), ViT(tiny_config(dropout=0.3))
    assert not any(isinstance(module, torch.nn.Dropout) for module in plain.modules())
    assert sum(isinstance(module, torch.nn.Dropout) for module in dropping.modules()) > 0
    torch.nn.init.normal_(plain.head.weight)  # the zero-initialised head would hide any difference
    dropping.load_state_dict(plain.state_dict())  # strict: the same keys either way
    images = torch.randn(4, 1, 28, 28)
    plain.eval()
    dropping.eval()
    torch.testing.assert_close(dropping(images), plain(images))
    dropping.train()
    assert not torch.allclose(dropping(images), dropping(images))  # drop_path is 0: this is dropout


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(embed_dim=30, num_heads=4), "not divisible"),
        (dict(patch_size=32), "larger than"),
        (dict(pool="max"), "model.pool"),
        (dict(posenc="rope"), "model.posenc"),
        (dict(depth=0), "at least 1"),
        (dict(stem="conv"), "power of 2"),  # tiny_config's patch is 7
        (dict(stem="resnet"), "model.stem"),
    ],
)
def test_impossible_configs_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        ViT(tiny_config(**overrides))


def test_no_weight_decay_names_tokens_and_position_table():
    assert ViT(tiny_config(pool="cls", posenc="learned")).no_weight_decay() == {"cls_token", "pos_embed"}
    assert ViT(tiny_config(pool="map", posenc="sincos2d")).no_weight_decay() == {"attn_pool.probe"}


def test_class_token_with_mean_pooling_and_norm_after_pooling():
    torch.manual_seed(0)
    model = ViT(tiny_config(pool="mean", class_token=True, norm_after_pool=True)).eval()
    images = torch.randn(2, 1, 28, 28)
    out = model(images, return_intermediates=True)
    assert out["tokens"].shape == (2, 17, 32)
    expected = model.norm(out["tokens"][:, 1:].mean(dim=1))  # the class token is not averaged in
    torch.testing.assert_close(out["pooled"], expected)
