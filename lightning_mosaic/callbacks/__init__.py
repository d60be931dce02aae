"""Lightning callbacks: the gossip step of Mosaic Learning."""

from lightning_mosaic.callbacks.gossip import MosaicGossip, NonFiniteParametersError

__all__ = ["MosaicGossip", "NonFiniteParametersError"]
