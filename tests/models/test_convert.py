"""Loading Hugging Face and timm ViT checkpoints gives the same logits as the source implementation.

Hugging Face transformers runs here, so it is the reference. timm does not import on these
machines (it needs torchvision); its key layout (patch_embed.proj, cls_token, pos_embed with the
class row first, blocks.N.attn.qkv with Q, K, V stacked, mlp.fc1/fc2, norm or fc_norm, head) is
produced from the Hugging Face weights here, so the timm path is checked against the same reference.
"""

import pytest
import torch
from safetensors.torch import load_file, save_file

from vitlab.errors import CheckpointError
from vitlab.models.convert import from_timm, load_foreign
from vitlab.models.vit import ViT

transformers = pytest.importorskip("transformers")


SMALL_VIT = dict(
    image_size=32,
    patch_size=8,
    num_channels=3,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=96,
)


def jitter(model):
    """Random, non-trivial weights everywhere (HF initialises some to zero)."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


def hf_model(qkv_bias=True, num_labels=5):
    torch.manual_seed(0)
    labels = {i: f"class{i}" for i in range(num_labels)}
    config = transformers.ViTConfig(
        **SMALL_VIT,
        num_labels=num_labels,
        qkv_bias=qkv_bias,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    return jitter(transformers.ViTForImageClassification(config).eval())


def as_vitlab(converted):
    model = ViT(converted.config).eval()
    model.load_state_dict(converted.state)
    return model


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_hugging_face_folder_gives_the_same_logits(tmp_path, qkv_bias):
    reference = hf_model(qkv_bias=qkv_bias)
    reference.save_pretrained(tmp_path / "hf")
    converted = load_foreign(tmp_path / "hf")
    assert converted.source_format == "huggingface"
    assert converted.class_names == [f"class{i}" for i in range(5)]
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = reference(pixel_values=images).logits
    actual = as_vitlab(converted)(images)
    assert (actual - expected).abs().max().item() <= 1e-4


def timm_layout(reference, folder):
    """The same weights under timm's VisionTransformer key names, from the HF on-disk names."""
    reference.save_pretrained(folder)
    sd = {k.removeprefix("vit."): v for k, v in load_file(folder / "model.safetensors").items()}
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
        "head.weight": sd["classifier.weight"],
        "head.bias": sd["classifier.bias"],
    }
    for i in range(reference.config.num_hidden_layers):
        hf, tm = f"encoder.layer.{i}.", f"blocks.{i}."
        att = hf + "attention.attention."
        out[tm + "attn.qkv.weight"] = torch.cat([sd[att + n + ".weight"] for n in ("query", "key", "value")])
        out[tm + "attn.qkv.bias"] = torch.cat([sd[att + n + ".bias"] for n in ("query", "key", "value")])
        for ours, theirs in (
            ("attn.proj", "attention.output.dense"),
            ("mlp.fc1", "intermediate.dense"),
            ("mlp.fc2", "output.dense"),
            ("norm1", "layernorm_before"),
            ("norm2", "layernorm_after"),
        ):
            for kind in ("weight", "bias"):
                out[f"{tm}{ours}.{kind}"] = sd[f"{hf}{theirs}.{kind}"]
    return out


def test_timm_class_token_model_gives_the_same_logits(tmp_path):
    reference = hf_model()
    layout = timm_layout(reference, tmp_path / "hf")
    save_file(layout, tmp_path / "timm.safetensors")
    torch.save(layout, tmp_path / "timm.pth")
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = reference(pixel_values=images).logits
    for path in (tmp_path / "timm.safetensors", tmp_path / "timm.pth"):
        converted = load_foreign(path, num_heads=4)
        assert converted.config.pool == "cls" and converted.config.layer_norm_eps == 1e-6
        with torch.no_grad():
            assert (as_vitlab(converted)(images) - expected).abs().max().item() <= 1e-4


def test_timm_average_pool_with_fc_norm_gives_the_reference_logits(tmp_path):
    reference = hf_model()
    layout = timm_layout(reference, tmp_path / "hf")
    fc_weight, fc_bias = torch.randn(48) * 0.1 + 1, torch.randn(48) * 0.1
    layout["fc_norm.weight"], layout["fc_norm.bias"] = fc_weight, fc_bias
    del layout["norm.weight"], layout["norm.bias"]  # timm's avg-pool models have fc_norm, not norm
    converted = from_timm(layout, num_heads=4)
    assert converted.config.pool == "mean" and converted.config.class_token and converted.config.norm_after_pool
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = reference.vit(pixel_values=images, output_hidden_states=True).hidden_states[-1]
        pooled = torch.nn.functional.layer_norm(hidden[:, 1:].mean(dim=1), (48,), fc_weight, fc_bias, eps=1e-6)
        expected = reference.classifier(pooled)
        actual = as_vitlab(converted)(images)
    assert (actual - expected).abs().max().item() <= 1e-4


def test_foreign_files_that_cannot_be_converted_are_refused(tmp_path):
    layout = timm_layout(hf_model(), tmp_path / "hf")
    layout["blocks.0.ls1.gamma"] = torch.ones(48)
    with pytest.raises(CheckpointError, match="layer scale"):
        from_timm(layout)
    (tmp_path / "junk.pth").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a weights file vitlab reads|cannot be read"):
        load_foreign(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="not a timm"):
        from_timm({"foo": torch.zeros(1)})


def test_pickled_objects_are_never_executed(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"weights": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="pickled objects are never loaded") as refused:
        load_foreign(tmp_path / "evil.pth")
    assert "weights_only" not in str(refused.value)  # torch's text suggests loading it unsafely: not passed on


def test_hugging_face_backbone_without_a_head_gives_the_same_tokens(tmp_path):
    torch.manual_seed(0)
    backbone = jitter(transformers.ViTModel(transformers.ViTConfig(**SMALL_VIT)).eval())
    backbone.save_pretrained(tmp_path / "backbone")
    converted = load_foreign(tmp_path / "backbone")
    assert not any(key.startswith("head.") for key in converted.state)  # a backbone brings no classifier
    model = ViT(converted.config).eval()
    missing, unexpected = model.load_state_dict(converted.state, strict=False)
    assert set(missing) == {"head.weight", "head.bias"} and not unexpected
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = backbone(pixel_values=images).last_hidden_state
        actual = model.forward_features(images)
    # vitlab keeps the class token's position folded into the token, so every token matches.
    assert (actual - expected).abs().max().item() <= 1e-4
