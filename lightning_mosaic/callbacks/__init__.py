"""Lightning callbacks: the gossip step of Mosaic Learning, its gossip target contract and the run summary."""

from lightning_mosaic.callbacks.gossip import MosaicGossip, NonFiniteParametersError
from lightning_mosaic.callbacks.summary import MosaicSummary
from lightning_mosaic.callbacks.target import GossipTarget, ModuleParameters

__all__ = ["GossipTarget", "ModuleParameters", "MosaicGossip", "MosaicSummary", "NonFiniteParametersError"]
