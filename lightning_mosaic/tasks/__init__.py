"""Task-specific MosaicModules: losses and metrics for tasks other than classification."""

from lightning_mosaic.tasks.rating import RatingModule

__all__ = ["RatingModule"]
