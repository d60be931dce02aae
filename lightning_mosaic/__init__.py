"""lightning_mosaic: Mosaic Learning (fragment-wise epidemic gossip) for decentralized learning on Lightning.

Mosaic Learning (Biswas et al., arXiv 2602.04352): every node splits its model into K fragments and gossips each
fragment to its own random peers; K = 1 is Epidemic Learning (de Vos et al., NeurIPS 2023).
"""

from lightning_mosaic.callbacks import MosaicGossip
from lightning_mosaic.module import MosaicModule
from lightning_mosaic.replicas import ReplicaStack

__version__ = "0.1.0"

__all__ = ["MosaicGossip", "MosaicModule", "ReplicaStack", "__version__"]
