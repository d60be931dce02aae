"""Mixing kernel alone: dense ``(K, n, n)`` products vs index aggregation (torch scatter-add and the fused numba
pass) vs copying the bytes once.

For each (n, d) and K, one round's graphs are drawn once (EL-Local, s = 3, random fragmentation) and each kernel mixes
an ``(n, d)`` float32 matrix in place; the floor is ``dst.copy_(src)`` of the same ``n * d`` values (one read and one
write of every byte, the memory-bandwidth floor). Times are medians of interleaved repeats; the table reports
kernel / floor. The graph draws are timed too (``draw_*``), as they are part of a round. Ways:

- ``dense``: :func:`~lightning_mosaic.gossip.mix_` with the ``(K, n, n)`` matrices; skipped for K > 64 (the rule never
  picks it there, and at K = 1024 it was 2-5x slower than the torch index kernel, ``docs/benchmarks.md``) and where
  the matrices would exceed 1 GiB.
- ``index_torch``: :func:`~lightning_mosaic.gossip.mix_received_` with ``backend="torch"``.
- ``fused_tiles`` / ``fused_sorted``: the fused kernel (:mod:`lightning_mosaic.gossip.fused`) with each column layout;
  ``fused_contiguous``: the fused kernel on a contiguous fragmentation (no column permutation at all).
- ``picked``: what ``kernel="auto"`` runs (:func:`~lightning_mosaic.gossip.default_kernel`, and for the index kernel
  :func:`~lightning_mosaic.gossip.mixing.default_backend` and :func:`~lightning_mosaic.gossip.fused.default_strategy`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks.common import interleaved_medians
from lightning_mosaic.gossip import FragmentGossip, default_kernel, fused, make_fragmentation, mix_, mix_received_
from lightning_mosaic.gossip.mixing import default_backend, workspace_size

FULL_GRID = [(16, 90_000), (64, 90_000), (256, 1_000_000), (1024, 50_000)]
FULL_KS = [1, 8, 64, 1024]
TINY_GRID = [(16, 2_000), (64, 1_000)]
TINY_KS = [1, 8]
PEERS = 3
DENSE_MATRIX_LIMIT_BYTES = 1 << 30
"""The dense kernel is skipped where its ``(K, n, n)`` float32 matrices alone would exceed 1 GiB."""
DENSE_MAX_FRAGMENTS = 64
"""The dense kernel is skipped above this K (never picked there; slowest by far)."""


def _time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_size(n: int, d: int, k: int, repeats: int) -> dict[str, Any]:
    """Ratios of every kernel (and of the graph draws) to the copy floor for one (n, d, K)."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    copy = torch.empty_like(x)
    index = FragmentGossip([d], n, fragments=k, peers=PEERS, kernel="index", seed=0)
    fragmentation = index.fragmentation
    draw_index = _time_once(lambda: index.next_graphs())
    receivers, delivered, _ = index.next_graphs()
    workspace = x.new_empty(workspace_size(n, fragmentation))
    contiguous = make_fragmentation([d], k, "contiguous")
    assignment = fragmentation.assignment
    fns = {
        "floor": lambda: copy.copy_(x),
        "index_torch": lambda: mix_received_(x, receivers, delivered, fragmentation, workspace, backend="torch"),
    }
    row: dict[str, Any] = {"n": n, "d": d, "K": k, "s": PEERS, "rule_picks": default_kernel(n, k)}
    if fused.available():
        fns["fused_tiles"] = lambda: fused.mix_received_fused_(x, receivers, delivered, assignment, "tiles")
        fns["fused_sorted"] = lambda: fused.mix_received_fused_(
            x, receivers, delivered, assignment, "sorted", workspace
        )
        fns["fused_contiguous"] = lambda: fused.mix_received_fused_(
            x, receivers, delivered, contiguous.assignment, "tiles"
        )
    dense_bytes = 4 * k * n * n
    if dense_bytes <= DENSE_MATRIX_LIMIT_BYTES and k <= DENSE_MAX_FRAGMENTS:
        dense = FragmentGossip([d], n, fragments=k, peers=PEERS, kernel="dense", seed=0)
        draw_dense = _time_once(lambda: dense.next_matrices())
        matrices = dense.next_matrices()
        fns["dense"] = lambda: mix_(x, matrices, fragmentation)
    times = interleaved_medians(fns, repeats)
    floor = times["floor"]
    row["floor_ms"] = 1e3 * floor
    for way, t in times.items():
        if way != "floor":
            row[f"{way}_over_floor"] = t / floor
    row["draw_index_over_floor"] = draw_index / floor
    if "dense" in times:
        row["draw_dense_over_floor"] = draw_dense / floor
    else:
        row["dense_over_floor"] = None
        row["dense_skipped"] = (
            f"K > {DENSE_MAX_FRAGMENTS}"
            if k > DENSE_MAX_FRAGMENTS
            else f"(K, n, n) matrices would take {dense_bytes / 2**30:.1f} GiB"
        )
    if row["rule_picks"] == "index":
        backend = default_backend(x)
        way = "index_torch" if backend == "torch" else f"fused_{fused.default_strategy(n, k)}"
        row["picked_way"] = way
        row["picked_over_floor"] = row[f"{way}_over_floor"]
        row["picked_round_over_floor"] = row["picked_over_floor"] + row["draw_index_over_floor"]
    else:
        row["picked_way"] = "dense"
        row["picked_over_floor"] = row["dense_over_floor"]
        row["picked_round_over_floor"] = row["dense_over_floor"] + row["draw_dense_over_floor"]
    return row


def run(tiny: bool = False) -> list[dict[str, Any]]:
    """All (n, d) x K of the grid (``tiny``: a small grid for the smoke test)."""
    grid, ks = (TINY_GRID, TINY_KS) if tiny else (FULL_GRID, FULL_KS)
    rows = []
    for n, d in grid:
        for k in ks:
            repeats = 3 if n * d >= 10_000_000 else 7
            rows.append(bench_size(n, d, k, 2 if tiny else repeats))
            r = rows[-1]
            ways = ", ".join(
                f"{key[: -len('_over_floor')]} {value:.2f}x"
                for key, value in r.items()
                if key.endswith("_over_floor") and not key.startswith(("draw", "picked")) and value is not None
            )
            print(
                f"  mixing n={n} d={d} K={k} (floor {r['floor_ms']:.2f} ms): {ways}; picked {r['picked_way']} "
                f"{r['picked_over_floor']:.2f}x",
                flush=True,
            )
    return rows
