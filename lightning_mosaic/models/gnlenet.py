"""GN-LeNet, the CIFAR model of Epidemic Learning's reference code (decentralizepy, ``models/CNN.py``)."""

from __future__ import annotations

from torch import Tensor, nn


class GNLeNet(nn.Module):
    """LeNet-style CNN with GroupNorm, as used by EL (de Vos et al., NeurIPS 2023) and Mosaic Learning.

    Three blocks of Conv 5x5 ('same' padding) -> GroupNorm(2 groups) -> ReLU -> MaxPool 2, channels
    ``in_channels -> 32 -> 32 -> 64``, then Linear(64 * (H/8) * (W/8), num_classes). For 3x32x32 inputs and 10
    classes: 89,834 parameters. GroupNorm (no running statistics) keeps nodes independent of batch composition,
    which matters on non-IID shards (Hsieh et al., ICML 2020).

    Args:
        num_classes: Number of output classes (10 for CIFAR-10, 100 for CIFAR-100).
        in_channels: Input channels (3 for RGB).
        image_size: Input height = width in pixels, divisible by 8 (32 for CIFAR).

    Shapes:
        input ``(B, in_channels, image_size, image_size)`` -> logits ``(B, num_classes)``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if image_size < 8 or image_size % 8:
            raise ValueError(f"image_size must be a positive multiple of 8, got {image_size}")
        layers: list[nn.Module] = []
        channels = [in_channels, 32, 32, 64]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [
                nn.Conv2d(c_in, c_out, 5, padding=2),
                nn.GroupNorm(2, c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(64 * (image_size // 8) ** 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))
