"""lightning_mosaic: Mosaic Learning (fragment-wise epidemic gossip) for decentralized learning on Lightning.

Mosaic Learning (Biswas et al., arXiv 2602.04352): every node splits its model into K fragments and gossips each
fragment to its own random peers; K = 1 is Epidemic Learning (de Vos et al., NeurIPS 2023).

The Lightning classes are imported lazily, so that ``import lightning_mosaic.gossip`` (pure tensor code) does not
import Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "MosaicFaults": "lightning_mosaic.callbacks.faults",
    "MosaicGossip": "lightning_mosaic.callbacks.gossip",
    "MosaicModule": "lightning_mosaic.module",
    "MosaicStrategy": "lightning_mosaic.distributed.strategy",
    "ReplicaStack": "lightning_mosaic.replicas",
}

__all__ = ["MosaicFaults", "MosaicGossip", "MosaicModule", "MosaicStrategy", "ReplicaStack", "__version__"]

if TYPE_CHECKING:
    from lightning_mosaic.callbacks.faults import MosaicFaults
    from lightning_mosaic.callbacks.gossip import MosaicGossip
    from lightning_mosaic.distributed.strategy import MosaicStrategy
    from lightning_mosaic.module import MosaicModule
    from lightning_mosaic.replicas import ReplicaStack


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_mosaic' has no attribute {name!r}")
