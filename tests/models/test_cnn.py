import torch

from vitlab.models.flops import forward_flops
from vitlab.models.registry import build_model, model_config


def test_resnet_baseline_classifies_28_and_32_pixel_images():
    for size, channels in ((28, 1), (32, 3)):
        config = model_config("resnet-small", img_size=size, in_channels=channels, embed_dim=8, depth=1)
        model = build_model(config).eval()
        logits = model(torch.randn(2, channels, size, size))
        assert logits.shape == (2, 10)
        torch.testing.assert_close(model.predict_proba(torch.randn(2, channels, size, size)).sum(1), torch.ones(2))
        assert forward_flops(config) > 0


def test_resnet_learns_a_batch():
    torch.manual_seed(0)
    model = build_model(model_config("resnet-small", embed_dim=8, depth=1))
    images, labels = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first
