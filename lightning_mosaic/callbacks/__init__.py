"""Lightning callbacks: the gossip step of Mosaic Learning, its gossip target contract, the fault model (churn,
stragglers) and the run summary."""

from lightning_mosaic.callbacks.faults import MosaicFaults
from lightning_mosaic.callbacks.gossip import MosaicGossip, NonFiniteParametersError
from lightning_mosaic.callbacks.summary import MosaicSummary
from lightning_mosaic.callbacks.target import GossipTarget, ModuleParameters

__all__ = [
    "GossipTarget",
    "ModuleParameters",
    "MosaicFaults",
    "MosaicGossip",
    "MosaicSummary",
    "NonFiniteParametersError",
]
