"""Data for decentralized training: Dirichlet non-IID partitions, per-node batch sampling, datamodules.

Training batches are shaped ``(n, B, ...)``: one mini-batch per node, each from that node's own shard.
"""

from lightning_mosaic.data.base import NodeDataModule
from lightning_mosaic.data.cifar10 import CIFAR10DataModule
from lightning_mosaic.data.cifar100 import CIFAR100DataModule
from lightning_mosaic.data.digits import DigitsDataModule
from lightning_mosaic.data.gather import GatheredSamples, TensorRowsDataset
from lightning_mosaic.data.movielens import MovieLensDataModule
from lightning_mosaic.data.partition import dirichlet_partition
from lightning_mosaic.data.sampler import NodeBatchCollate, NodeBatchSampler, NodeDataLoader
from lightning_mosaic.data.shard_sampler import NodeShardSampler

__all__ = [
    "dirichlet_partition",
    "NodeBatchSampler",
    "NodeDataLoader",
    "NodeBatchCollate",
    "NodeShardSampler",
    "GatheredSamples",
    "TensorRowsDataset",
    "NodeDataModule",
    "DigitsDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "MovieLensDataModule",
]
