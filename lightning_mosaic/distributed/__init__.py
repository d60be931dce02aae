"""Multi-process Mosaic Learning on ``torch.distributed``: node sharding, cross-rank mixing and the strategy.

``sharding`` and ``exchange`` are pure ``torch.distributed`` code; ``strategy`` is the Lightning glue
(``MosaicStrategy``, registered as ``Trainer(strategy="mosaic")``). The strategy is imported lazily so that the pure
parts do not import Lightning.
"""

from __future__ import annotations

from typing import Any

from lightning_mosaic.distributed.exchange import ExchangeStats, ShardedMixer
from lightning_mosaic.distributed.sharding import (
    ShardedConsensusDistance,
    distributed_world,
    global_consensus_distance,
    global_row_mean,
    node_bounds,
)

__all__ = [
    "ExchangeStats",
    "MosaicStrategy",
    "ShardedConsensusDistance",
    "ShardedMixer",
    "distributed_world",
    "global_consensus_distance",
    "global_row_mean",
    "node_bounds",
]


def __getattr__(name: str) -> Any:
    if name == "MosaicStrategy":
        from lightning_mosaic.distributed.strategy import MosaicStrategy

        return MosaicStrategy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
