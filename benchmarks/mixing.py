"""Mixing kernel alone: dense ``(K, n, n)`` products vs index (scatter-add) aggregation vs copying the bytes once.

For each (n, d) and K, one round's graphs are drawn once (EL-Local, s = 3, random fragmentation) and each kernel mixes
an ``(n, d)`` float32 matrix in place; the floor is ``dst.copy_(src)`` of the same ``n * d`` values (one read and one
write of every byte, the memory-bandwidth floor). Times are medians of interleaved repeats; the table reports
kernel / floor. The graph draws are timed too (``draw_*``), as they are part of a round. ``index_contiguous`` is the
index kernel with a contiguous fragmentation (no column gather/scatter), to separate the cost of the random
fragmentation's scattered columns from the aggregation itself.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks.common import interleaved_medians
from lightning_mosaic.gossip import FragmentGossip, default_kernel, make_fragmentation, mix_, mix_received_
from lightning_mosaic.gossip.mixing import workspace_size

FULL_GRID = [(16, 90_000), (64, 90_000), (256, 1_000_000), (1024, 50_000)]
FULL_KS = [1, 8, 64, 1024]
TINY_GRID = [(16, 2_000), (64, 1_000)]
TINY_KS = [1, 8]
PEERS = 3
DENSE_MATRIX_LIMIT_BYTES = 1 << 30
"""The dense kernel is skipped where its ``(K, n, n)`` float32 matrices alone would exceed 1 GiB."""


def _time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_size(n: int, d: int, k: int, repeats: int) -> dict[str, Any]:
    """Ratios of both kernels (and of the graph draws) to the copy floor for one (n, d, K)."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    copy = torch.empty_like(x)
    index = FragmentGossip([d], n, fragments=k, peers=PEERS, kernel="index", seed=0)
    fragmentation = index.fragmentation
    draw_index = _time_once(lambda: index.next_graphs())
    receivers, delivered = index.next_graphs()
    workspace = x.new_empty(workspace_size(n, fragmentation))
    contiguous = make_fragmentation([d], k, "contiguous")
    fns = {
        "floor": lambda: copy.copy_(x),
        "index": lambda: mix_received_(x, receivers, delivered, fragmentation, workspace),
        "index_contiguous": lambda: mix_received_(x, receivers, delivered, contiguous, workspace),
    }
    row: dict[str, Any] = {"n": n, "d": d, "K": k, "s": PEERS, "rule_picks": default_kernel(n, k)}
    dense_bytes = 4 * k * n * n
    if dense_bytes <= DENSE_MATRIX_LIMIT_BYTES:
        dense = FragmentGossip([d], n, fragments=k, peers=PEERS, kernel="dense", seed=0)
        draw_dense = _time_once(lambda: dense.next_matrices())
        matrices = dense.next_matrices()
        fns["dense"] = lambda: mix_(x, matrices, fragmentation)
        row["draw_dense_over_floor"] = None  # filled below
    times = interleaved_medians(fns, repeats)
    floor = times["floor"]
    row["floor_ms"] = 1e3 * floor
    row["index_over_floor"] = times["index"] / floor
    row["index_contiguous_over_floor"] = times["index_contiguous"] / floor
    row["draw_index_over_floor"] = draw_index / floor
    if "dense" in times:
        row["dense_over_floor"] = times["dense"] / floor
        row["draw_dense_over_floor"] = draw_dense / floor
        row["index_over_dense"] = times["index"] / times["dense"]
    else:
        row["dense_over_floor"] = None
        row["dense_skipped"] = f"(K, n, n) matrices would take {dense_bytes / 2**30:.1f} GiB"
    picked = row["index_over_floor"] if row["rule_picks"] == "index" else row["dense_over_floor"]
    row["picked_over_floor"] = picked
    row["picked_round_over_floor"] = (
        picked + (row["draw_index_over_floor"] if row["rule_picks"] == "index" else row["draw_dense_over_floor"])
        if picked is not None
        else None
    )
    row["index_extra_bytes"] = 4 * (n + 1) * d + 8 * 2 * k * n * PEERS  # accumulator + block copy, index lists
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
            dense = "skipped" if r["dense_over_floor"] is None else f"{r['dense_over_floor']:.2f}"
            print(
                f"  mixing n={n} d={d} K={k}: index {r['index_over_floor']:.2f}x (contiguous fragments "
                f"{r['index_contiguous_over_floor']:.2f}x), dense {dense}x floor "
                f"({r['floor_ms']:.2f} ms); rule: {r['rule_picks']}",
                flush=True,
            )
    return rows
