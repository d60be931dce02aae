"""Benchmark suite of lightning-mosaic (issue 7, speed and scale). Run it with ``python -m benchmarks.run``."""
