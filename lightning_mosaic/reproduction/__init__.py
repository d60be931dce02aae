"""The paper's comparison as one command: a grid of runs over K and seeds, and a report (``mosaic reproduce``)."""

from lightning_mosaic.reproduction.report import aggregate, read_curves, write_report

__all__ = ["aggregate", "read_curves", "write_report"]
