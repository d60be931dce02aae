"""ResNets for 32x32 images with GroupNorm instead of BatchNorm (decentralized and federated learning practice)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_mosaic._validation import check_int

__all__ = ["BasicBlock", "GNResNet", "ResNet8", "ResNet18"]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    if channels % groups:
        raise ValueError(f"groups must divide every layer width; {channels} channels are not divisible by {groups}")
    return nn.GroupNorm(groups, channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and a residual connection (He et al., CVPR 2016, Figure 2).

    ``out = ReLU(GN(conv(ReLU(GN(conv(x))))) + shortcut(x))``; the shortcut is the identity, or a 1x1 strided
    convolution + GroupNorm when the shape changes (He et al.'s option B).

    Shapes:
        ``(B, in_channels, H, W)`` -> ``(B, channels, H / stride, W / stride)``.
    """

    def __init__(self, in_channels: int, channels: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(channels, groups)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = _norm(channels, groups)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), _norm(channels, groups)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        return self.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class GNResNet(nn.Module):
    """CIFAR-style ResNet with GroupNorm: 3x3 stem (no max-pool), stages of :class:`BasicBlock`, global average pool.

    Stage ``k`` has ``blocks[k]`` blocks of width ``widths[k]``, the first with stride 2 (except in stage 0).
    GroupNorm instead of BatchNorm keeps every node independent of its batch statistics, which break under non-IID
    shards (Hsieh et al., "The Non-IID Data Quagmire of Decentralized Machine Learning", ICML 2020) and would have
    to be gossiped as buffers.

    Args:
        blocks: Blocks per stage, each ``>= 1``.
        widths: Channels per stage (same length as ``blocks``), each divisible by ``groups``.
        num_classes: Output classes ``>= 2``.
        groups: GroupNorm groups ``>= 1`` (2 as in GN-LeNet, the EL reference; 32 in Wu and He, ECCV 2018).
        in_channels: Input channels.

    Shapes:
        ``(B, in_channels, H, W)`` -> logits ``(B, num_classes)``.

    Raises:
        ValueError: Empty or mismatched ``blocks`` / ``widths``, or ``groups`` not dividing a width.
    """

    def __init__(
        self,
        blocks: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        groups: int = 2,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if not blocks or len(blocks) != len(widths):
            raise ValueError(f"blocks and widths must be non-empty and of equal length; got {blocks} and {widths}")
        check_int("num_classes", num_classes, 2)
        check_int("groups", groups, 1)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), _norm(widths[0], groups), nn.ReLU()
        )
        layers: list[nn.Module] = []
        channels = widths[0]
        for stage, (count, width) in enumerate(zip(blocks, widths, strict=True)):
            for index in range(check_int(f"blocks[{stage}]", count, 1)):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(BasicBlock(channels, width, stride, groups))
                channels = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.layers(self.stem(x))).flatten(1))


class ResNet8(GNResNet):
    """ResNet-8 for CIFAR: 3 stages of one block, widths 16-32-64 (He et al.'s 6n + 2 family with n = 1).

    78,042 parameters for 10 classes, 83,892 for 100 (1x1 projection shortcuts, GroupNorm affine parameters).
    """

    def __init__(self, num_classes: int = 10, groups: int = 2, in_channels: int = 3) -> None:
        super().__init__((1, 1, 1), (16, 32, 64), num_classes, groups, in_channels)


class ResNet18(GNResNet):
    """ResNet-18 for CIFAR: 4 stages of two blocks, widths 64-128-256-512, 3x3 stem.

    11,173,962 parameters for 10 classes, 11,220,132 for 100 (the same count as the BatchNorm version).
    """

    def __init__(self, num_classes: int = 10, groups: int = 2, in_channels: int = 3) -> None:
        super().__init__((2, 2, 2, 2), (64, 128, 256, 512), num_classes, groups, in_channels)
