"""Data for decentralized training: Dirichlet non-IID partitions, per-node batch sampling, datamodules.

Training batches are shaped ``(n, B, ...)``: one mini-batch per node, each from that node's own shard.
"""

from lightning_mosaic.data.partition import dirichlet_partition

__all__ = ["dirichlet_partition"]
