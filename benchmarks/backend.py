"""Where the fused mixing backend pays: torch scatter-add vs fused numba pass, per gossip round, over (n, d, K).

For each cell of the grid (n nodes, d coordinates, K fragments; EL-Local, s = 3, random fragmentation, float32) one
gossip round is timed with each backend of :func:`~lightning_mosaic.gossip.mix_received_`: the round's graph draw
(:meth:`FragmentGossip.next_graphs`, the same for both) plus the mix, in place, with a reused workspace. The two are
measured in turns (torch, fused, torch, fused, ...; :func:`benchmarks.common.interleaved_medians`), the whole grid
is repeated ``passes`` times (cells in the same order each pass), and a cell's ratio is the median over passes of
its per-pass ratio torch round / fused round; the spread of the per-pass ratios is kept to show the noise.

``threshold`` is the rule's input: the smallest n * d of the grid from which on the fused round is at least
:data:`CLEAR_MARGIN` faster at *every* measured (n, K), so below it the fused kernel (and numba's one-off compile,
also measured: a fresh process with an empty ``NUMBA_CACHE_DIR``, then one with that cache filled) buys nothing
measurable. :data:`lightning_mosaic.gossip.mixing.FUSED_MIN_VALUES` is set from it (``docs/benchmarks.md``).

Usage: ``python -m benchmarks.backend [--passes 3] [--threads N] [--out benchmarks/results_backend.json]``; the suite
(``python -m benchmarks.run --sections backend``) calls :func:`run`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import interleaved_medians, machine, write_json_atomic
from lightning_mosaic.gossip import FragmentGossip, mix_received_
from lightning_mosaic.gossip.mixing import default_backend, workspace_size

NODES = [16, 64, 256]
VALUES = [2**p for p in range(14, 24)]
"""n * d per round: 16,384 to 8,388,608 values (64 KiB to 32 MiB of float32)."""
FRAGMENTS = [1, 8, 64]
TINY_NODES, TINY_VALUES, TINY_FRAGMENTS = [4], [256, 1024], [1, 2]
PEERS = 3
CLEAR_MARGIN = 1.10
"""Torch round / fused round from which the fused backend counts as clearly faster (10%)."""
CELL_SECONDS = 0.2
"""Measuring time per backend, cell and pass, from which the number of repeats follows (5 to 300)."""

_COMPILE_SCRIPT = """
import time, sys, torch
start = time.perf_counter()
from lightning_mosaic.gossip import FragmentGossip, fused, mix_received_
g = FragmentGossip([4810], 16, fragments=8, peers=3, kernel="index", seed=0)
x = torch.randn(16, 4810)
receivers, delivered, _ = g.next_graphs()
imported = time.perf_counter()
mix_received_(x, receivers, delivered, g.fragmentation, backend="fused")
first = time.perf_counter()
fused.mix_received_fused_(x, receivers, delivered, g.fragmentation.assignment, "sorted")
print(imported - start, first - imported, time.perf_counter() - first)
"""


def _round_fn(gossip: FragmentGossip, x: torch.Tensor, workspace: torch.Tensor, backend: str):
    def round_() -> None:
        receivers, delivered, _ = gossip.next_graphs()
        mix_received_(x, receivers, delivered, gossip.fragmentation, workspace, backend=backend)

    return round_


def _repeats(fn, seconds: float) -> int:
    start = time.perf_counter()
    fn()
    return int(min(300, max(5, seconds / max(time.perf_counter() - start, 1e-6))))


def bench_cell(n: int, d: int, k: int, seconds: float) -> dict[str, float]:
    """Median seconds of one gossip round (draw + mix) with each backend, interleaved, for one (n, d, K)."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    gossip = FragmentGossip([d], n, fragments=k, peers=PEERS, kernel="index", seed=0)
    workspace = x.new_empty(workspace_size(n, gossip.fragmentation))
    fns = {backend: _round_fn(gossip, x, workspace, backend) for backend in ("torch", "fused")}
    fns["fused"]()  # compiled (or loaded from numba's cache) outside the timing
    repeats = _repeats(fns["torch"], seconds)
    return interleaved_medians(fns, repeats, warmup=2)


def compile_seconds() -> dict[str, float]:
    """numba's one-off cost, in fresh processes: import + graph draw, first fused round (compiling the kernels it
    runs: CSR lists, layout, ``"tiles"``), then a ``"sorted"`` round (compiling that layout), first with an empty
    ``NUMBA_CACHE_DIR``, then again with the cache the first process wrote."""
    out: dict[str, float] = {}
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        path = f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": path}
        for label in ("cold", "warm"):
            done = subprocess.run(
                [sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True, check=True
            )
            imported, first, sorted_first = (float(v) for v in done.stdout.split())
            out[f"{label}_import_s"] = imported
            out[f"{label}_first_round_s"] = first
            out[f"{label}_first_sorted_round_s"] = sorted_first
    return out


def threshold(rows: list[dict[str, Any]], margin: float = CLEAR_MARGIN) -> int | None:
    """The smallest n * d of ``rows`` such that every row with at least that many values has a median
    torch / fused ratio >= ``margin``; ``None`` if even the largest size misses it."""
    sizes = sorted({r["values"] for r in rows})
    best = None
    for size in reversed(sizes):
        if all(r["torch_over_fused"] >= margin for r in rows if r["values"] >= size):
            best = size
        else:
            break
    return best


def run(tiny: bool = False, passes: int = 3, with_compile: bool = True) -> dict[str, Any]:
    """The grid (``tiny``: a toy grid, one pass, no compile timing), the threshold and numba's compile cost."""
    nodes, values, fragments = (TINY_NODES, TINY_VALUES, TINY_FRAGMENTS) if tiny else (NODES, VALUES, FRAGMENTS)
    passes, seconds = (1, 0.01) if tiny else (passes, CELL_SECONDS)
    cells = [(n, v // n, k) for v in values for n in nodes for k in fragments if v // n >= k]
    samples: dict[tuple[int, int, int], list[dict[str, float]]] = {cell: [] for cell in cells}
    for p in range(passes):
        for n, d, k in cells:
            samples[(n, d, k)].append(bench_cell(n, d, k, seconds))
        print(f"  backend: pass {p + 1}/{passes} done, load {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for (n, d, k), times in samples.items():
        ratios = [t["torch"] / t["fused"] for t in times]
        torch_s = statistics.median(t["torch"] for t in times)
        fused_s = statistics.median(t["fused"] for t in times)
        rows.append(
            {
                "n": n,
                "d": d,
                "K": k,
                "s": PEERS,
                "values": n * d,
                "torch_round_ms": 1e3 * torch_s,
                "fused_round_ms": 1e3 * fused_s,
                "saved_us_per_round": 1e6 * (torch_s - fused_s),
                "torch_over_fused": statistics.median(ratios),
                "torch_over_fused_passes": ratios,
                "auto_picks": default_backend(torch.empty(n, d)),
            }
        )
        r = rows[-1]
        print(
            f"  backend n={n} d={d} K={k} ({n * d} values): torch {r['torch_round_ms']:.3f} ms, fused "
            f"{r['fused_round_ms']:.3f} ms, torch/fused {r['torch_over_fused']:.2f} "
            f"[{min(ratios):.2f}-{max(ratios):.2f}], auto picks {r['auto_picks']}",
            flush=True,
        )
    result: dict[str, Any] = {"rows": rows, "margin": CLEAR_MARGIN, "threshold_values": threshold(rows)}
    if with_compile and not tiny:
        result["compile"] = compile_seconds()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=3, help="repeats of the whole grid (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--out", default="benchmarks/results_backend.json", help="JSON file (default: %(default)s)")
    args = parser.parse_args()
    if args.passes < 1:
        parser.error(f"--passes must be >= 1, got {args.passes}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    info = machine()
    start = time.perf_counter()
    result = run(passes=args.passes)
    payload = {
        "command": "python -m benchmarks.backend " + " ".join(sys.argv[1:]),
        "machine": info,
        "load_average_at_end": list(os.getloadavg()),
        "elapsed_s": time.perf_counter() - start,
        **result,
    }
    write_json_atomic(args.out, payload)
    print(f"threshold (n * d, torch/fused >= {CLEAR_MARGIN} from there on): {result['threshold_values']}")
    print(f"compile: {result.get('compile')}")
    print(f"written {args.out} ({payload['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
