"""Multi-process Mosaic Learning on ``torch.distributed``: node sharding, cross-rank mixing and the strategy.

``sharding`` and ``exchange`` are pure ``torch.distributed`` code; ``strategy`` is the Lightning glue
(``MosaicStrategy``, registered as ``Trainer(strategy="mosaic")``, and ``local_nodes(trainer, num_nodes)``, the
nodes a process holds). They are imported lazily so that the pure parts do not import Lightning.
"""

from __future__ import annotations

from typing import Any

from lightning_mosaic.distributed.diagnosis import CommunicationError
from lightning_mosaic.distributed.exchange import ExchangeStats, ShardedMixer
from lightning_mosaic.distributed.sharding import (
    ShardedConsensusDistance,
    distributed_world,
    global_consensus_distance,
    global_row_mean,
    node_bounds,
)

__all__ = [
    "CommunicationError",
    "ExchangeStats",
    "MosaicStrategy",
    "ShardedConsensusDistance",
    "ShardedMixer",
    "distributed_world",
    "global_consensus_distance",
    "global_row_mean",
    "local_nodes",
    "node_bounds",
]

_STRATEGY_NAMES = ("MosaicStrategy", "local_nodes")


def __getattr__(name: str) -> Any:
    if name in _STRATEGY_NAMES:
        from lightning_mosaic.distributed import strategy

        return getattr(strategy, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
