"""Lightning callbacks: the gossip step of Mosaic Learning."""

from lightning_mosaic.callbacks.gossip import MosaicGossip

__all__ = ["MosaicGossip"]
