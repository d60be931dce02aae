"""lightning_mosaic: Mosaic Learning (fragment-wise epidemic gossip) on PyTorch Lightning."""

__version__ = "0.1.0"
