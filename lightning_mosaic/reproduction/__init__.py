"""The paper's comparison as one command: a grid of runs over K and seeds, and a report (``mosaic reproduce``)."""

from lightning_mosaic.reproduction.report import (
    aggregate,
    describe_setup,
    format_metric,
    plot_curves,
    read_curves,
    write_report,
)

__all__ = ["aggregate", "describe_setup", "format_metric", "plot_curves", "read_curves", "write_report"]
