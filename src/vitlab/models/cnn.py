"""The CNN baseline: a small pre-activation ResNet for 28x28 and 32x32 images.

Three stages of residual blocks at widths w, 2w, 4w (the last two halve the resolution), global
average pooling and a linear head. `ModelConfig.embed_dim` is the base width w and
`ModelConfig.depth` the number of residual blocks per stage, so `vitlab compare` can size both
architectures with the same two knobs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.config import ModelConfig


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice, plus the input (projected with a 1x1 conv when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class ResNet(nn.Module):
    """Small ResNet classifier with the same forward/forward_features/pool/forward_head split as ViT."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        width = config.embed_dim
        self.stem = nn.Conv2d(config.in_channels, width, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_channels = width
        for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
            for index in range(config.depth):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(PreActBlock(in_channels, stage_width, stride))
                in_channels = stage_width
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.BatchNorm2d(in_channels)
        self.head = nn.Linear(in_channels, config.num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def set_attention_kernel(self, kernel: str) -> None:
        """A CNN has no attention; present so that export treats every model alike."""

    def no_weight_decay(self) -> set[str]:
        """No parameters beyond biases and norms are exempt from decay."""
        return set()

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> feature map (batch, channels, H/4, W/4)."""
        return F.relu(self.norm(self.blocks(self.stem(images))))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooling."""
        return features.mean(dim=(2, 3))

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled vector -> class logits."""
        return self.head(pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.forward_head(self.pool(self.forward_features(images)))

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities."""
        return self.forward(images).float().softmax(dim=-1)
