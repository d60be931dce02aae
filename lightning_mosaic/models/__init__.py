"""Per-node models."""

from lightning_mosaic.models.gnlenet import GNLeNet
from lightning_mosaic.models.mf import MatrixFactorization
from lightning_mosaic.models.mlp import MLP

__all__ = ["GNLeNet", "MLP", "MatrixFactorization"]
