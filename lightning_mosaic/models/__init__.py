"""Per-node models."""

from lightning_mosaic.models.gnlenet import GNLeNet
from lightning_mosaic.models.mf import MatrixFactorization
from lightning_mosaic.models.mlp import MLP
from lightning_mosaic.models.resnet import GNResNet, ResNet8, ResNet18

__all__ = ["GNLeNet", "GNResNet", "MLP", "MatrixFactorization", "ResNet8", "ResNet18"]
