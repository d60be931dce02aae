"""Fused CPU mixing kernel: one cache-blocked pass over the ``(n, d)`` parameter matrix (numba). Pure numeric code.

The index kernel (:func:`~lightning_mosaic.gossip.mixing.mix_received_`) written with torch operators makes
``s + 3`` passes over the whole matrix (copy into an accumulator, one ``index_add_`` per message slot, a division),
plus a gather and a scatter of every column under the random fragmentation. This kernel computes the same values in
one pass: the columns are cut into tiles small enough that the ``(n, tile)`` block of every node stays in the core's
cache, and each output value is summed there from its own node and the senders of its fragment. Main memory then
sees one read and one write of the matrix, like a copy.

Every value is summed in the order the torch index kernel sums it (own value first, then the messages by slot, then
by sender) and divided the same way, so both kernels give bit-identical results.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

try:  # numba is a dependency; the guard keeps the torch kernels usable where it cannot be installed
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None

if numba is not None and "NUMBA_THREADING_LAYER" not in os.environ:
    # numba's own thread pool, not its OpenMP layer: a second OpenMP runtime next to torch's spins its idle threads
    # against torch's (2-core machines), and GNU OpenMP is not fork-safe (DataLoader workers are forked). Set
    # NUMBA_THREADING_LAYER to choose another layer for the whole process.
    numba.config.THREADING_LAYER = "workqueue"

TILE_BYTES = 1 << 20
"""Bytes of one ``(n, tile)`` block, from which the tile width in columns follows (:func:`tile_width`). 1 MiB: between
the per-core L2 caches of the two x86-64 machines measured in ``docs/benchmarks.md`` (512 KiB, 2 MiB); at n = 1024,
K = 8 (contiguous) 1 MiB tiles took 1.3x the copy floor against 2.2x for 256 KiB and 1.8x for 4 MiB."""


def available() -> bool:
    """Whether the fused kernel can run here (numba is importable)."""
    return numba is not None


if numba is not None:

    @njit(cache=True, nogil=True)
    def _in_lists(receivers, delivered, num_nodes):
        """CSR lists of the senders of every (fragment, receiver), ordered by (slot, sender). Fragment-major loops:
        the counters of one fragment (``n`` of them) stay in cache."""
        k_frags, n, s = receivers.shape
        indptr = np.zeros(k_frags * num_nodes + 1, np.int64)
        for k in range(k_frags):
            for i in range(n):
                for r in range(s):
                    if delivered[k, i, r]:
                        indptr[k * num_nodes + receivers[k, i, r] + 1] += 1
        for b in range(k_frags * num_nodes):
            indptr[b + 1] += indptr[b]
        fill = indptr[:-1].copy()
        senders = np.empty(indptr[-1], np.int32)
        for k in range(k_frags):
            for r in range(s):
                for i in range(n):
                    if delivered[k, i, r]:
                        b = k * num_nodes + receivers[k, i, r]
                        senders[fill[b]] = i
                        fill[b] += 1
        return indptr, senders

    @njit(cache=True, nogil=True)
    def _tile_layout(assignment, tile):
        """Per column tile: its columns sorted by fragment (stable) and the runs of one fragment in that order.

        Returns ``order`` (d,) (the tile-local offset of the q-th column in fragment order), ``run_ptr``
        (num_tiles + 1,) (the runs of tile t are ``run_ptr[t]:run_ptr[t + 1]``), ``run_start`` (runs + num_tiles,)
        (run r of tile t spans sorted offsets ``run_start[r + t]:run_start[r + t + 1]``) and ``run_frag`` (runs,).
        """
        d = assignment.shape[0]
        num_tiles = (d + tile - 1) // tile
        order = np.empty(d, np.int32)
        run_ptr = np.zeros(num_tiles + 1, np.int64)
        run_start = np.empty(d + num_tiles, np.int32)
        run_frag = np.empty(d, np.int64)
        runs = 0
        for t in range(num_tiles):
            c0 = t * tile
            c1 = min(d, c0 + tile)
            local = np.argsort(assignment[c0:c1], kind="mergesort")
            for q in range(c1 - c0):
                order[c0 + q] = local[q]
                k = assignment[c0 + local[q]]
                if q == 0 or k != run_frag[runs - 1]:
                    run_start[runs + t] = q
                    run_frag[runs] = k
                    runs += 1
            run_start[runs + t] = c1 - c0  # sentinel: the end of the tile's last run
            run_ptr[t + 1] = runs
        return order, run_ptr, run_start[: runs + num_tiles], run_frag[:runs]

    @njit(cache=True, nogil=True, error_model="numpy")
    def _aggregate(xs, col0, out, t, run_ptr, run_start, run_frag, indptr, senders, denominators):
        """``out[j, q] = (xs[j, col0 + q] + sum of xs[i, col0 + q] over the senders i of (fragment of q, j))
        / denominator`` for the runs of tile t, whose columns start at ``col0`` of ``xs`` in fragment order;
        ``out`` is ``(n, w)``."""
        n = xs.shape[0]
        # runs outer, nodes inner: the (fragment, node) lists are then read in memory order (indptr[k * n + j])
        for r in range(run_ptr[t], run_ptr[t + 1]):
            a = run_start[r + t]
            e = run_start[r + t + 1]
            for j in range(n):
                b = run_frag[r] * n + j
                p = indptr[b]
                m = indptr[b + 1] - p
                den = denominators[b]
                # slices and range(length) loops: numba then knows the indices are in bounds and vectorizes
                oj = out[j, a:e]
                xj = xs[j, col0 + a : col0 + e]
                length = e - a
                # the torch index kernel's order: own value, then the senders in list order; unrolled up to 3
                if m == 0:
                    for q in range(length):
                        oj[q] = xj[q] / den
                elif m == 1:
                    x1 = xs[senders[p], col0 + a : col0 + e]
                    for q in range(length):
                        oj[q] = (xj[q] + x1[q]) / den
                elif m == 2:
                    x1 = xs[senders[p], col0 + a : col0 + e]
                    x2 = xs[senders[p + 1], col0 + a : col0 + e]
                    for q in range(length):
                        oj[q] = ((xj[q] + x1[q]) + x2[q]) / den
                elif m == 3:
                    x1 = xs[senders[p], col0 + a : col0 + e]
                    x2 = xs[senders[p + 1], col0 + a : col0 + e]
                    x3 = xs[senders[p + 2], col0 + a : col0 + e]
                    for q in range(length):
                        oj[q] = (((xj[q] + x1[q]) + x2[q]) + x3[q]) / den
                else:
                    for q in range(length):
                        oj[q] = xj[q]
                    for pp in range(p, p + m):
                        xi = xs[senders[pp], col0 + a : col0 + e]
                        for q in range(length):
                            oj[q] += xi[q]
                    for q in range(length):
                        oj[q] /= den

    @njit(cache=True, parallel=True, nogil=True, error_model="numpy")
    def _mix_tiles(x, order, permuted, run_ptr, run_start, run_frag, indptr, senders, denominators, tile):
        """Tile-local strategy: each ``(n, tile)`` column block is gathered into fragment order in cache,
        aggregated, and scattered back."""
        n, d = x.shape
        for t in prange(run_ptr.shape[0] - 1):
            c0 = t * tile
            w = min(d, c0 + tile) - c0
            out = np.empty((n, w), x.dtype)
            if permuted:  # gather the tile in fragment order (it is in cache), aggregate, scatter back
                tile_order = order[c0 : c0 + w]
                xs = np.empty((n, w), x.dtype)
                for j in range(n):
                    xr = x[j, c0 : c0 + w]
                    xsj = xs[j]
                    for q in range(w):
                        xsj[q] = xr[tile_order[q]]
                _aggregate(xs, 0, out, t, run_ptr, run_start, run_frag, indptr, senders, denominators)
                for j in range(n):
                    xr = x[j, c0 : c0 + w]
                    oj = out[j]
                    for q in range(w):
                        xr[tile_order[q]] = oj[q]
            else:
                _aggregate(x, c0, out, t, run_ptr, run_start, run_frag, indptr, senders, denominators)
                for j in range(n):
                    xr = x[j, c0 : c0 + w]
                    oj = out[j]
                    for q in range(w):
                        xr[q] = oj[q]

    @njit(cache=True, parallel=True, nogil=True, error_model="numpy")
    def _mix_sorted(x, xs, order, run_ptr, run_start, run_frag, indptr, senders, denominators, tile):
        """Whole-row strategy: every row is gathered into fragment order (``xs``, ``(n, d)``), so that a fragment
        is one run of ``d / K`` columns; aggregated tile by tile in place; then every row is scattered back."""
        n, d = x.shape
        for j in prange(n):
            xr = x[j]
            xsj = xs[j]
            for q in range(d):
                xsj[q] = xr[order[q]]
        for t in prange(run_ptr.shape[0] - 1):
            c0 = t * tile
            w = min(d, c0 + tile) - c0
            out = np.empty((n, w), x.dtype)
            _aggregate(xs, c0, out, t, run_ptr, run_start, run_frag, indptr, senders, denominators)
            for j in range(n):
                xr = xs[j, c0 : c0 + w]
                oj = out[j]
                for q in range(w):
                    xr[q] = oj[q]
        for j in prange(n):
            xr = x[j]
            xsj = xs[j]
            for q in range(d):
                xr[order[q]] = xsj[q]


_LAYOUTS: dict[tuple[int, int, str], tuple] = {}


def _layout(assignment: Tensor, tile: int, strategy: str) -> tuple:
    """The column layout of a fragmentation for one strategy and tile width, computed once and kept (keyed by the
    assignment tensor, which a :class:`Fragmentation` holds for the whole run)."""
    key = (id(assignment), tile, strategy)
    cached = _LAYOUTS.get(key)
    if cached is not None and cached[0] is assignment:
        return cached[1]
    a = assignment.detach().cpu().numpy()
    if strategy == "tiles":
        order, run_ptr, run_start, run_frag = _tile_layout(a, tile)
        layout = (order, bool((np.diff(a) < 0).any()), run_ptr, run_start, run_frag)
    else:
        order = np.argsort(a, kind="stable").astype(np.int32)
        _, run_ptr, run_start, run_frag = _tile_layout(a[order], tile)
        layout = (order, run_ptr, run_start, run_frag)
    if len(_LAYOUTS) >= 32:
        _LAYOUTS.clear()
    _LAYOUTS[key] = (assignment, layout)
    return layout


STRATEGIES: tuple[str, ...] = ("auto", "tiles", "sorted")
"""How the fused kernel lays out a random fragmentation's columns: ``"tiles"`` sorts each cache-sized column tile
by fragment (no extra memory; a fragment's columns in a tile form one run of about ``tile / K`` values),
``"sorted"`` sorts every whole row (an ``(n, d)`` workspace; each fragment is one run of ``d / K`` values),
``"auto"`` picks :func:`default_strategy`."""

MIN_RUN = 128
"""Shortest average run (values of one fragment in one tile) for which ``"auto"`` keeps the ``"tiles"`` layout.
From ``python -m benchmarks.run --sections mixing`` on 2 idle cores (``docs/benchmarks.md``): ``"tiles"`` was faster
at 2,048 and 128 values per run (n = 16, K = 8; n = 256, K = 8), ``"sorted"`` at 64 and below (n = 64, K = 64;
n = 1024, K = 8), by up to 4x for K = 1024."""


def tile_width(num_nodes: int, itemsize: int) -> int:
    """Columns per tile: an ``(n, tile)`` block of ``itemsize``-byte values fills :data:`TILE_BYTES`."""
    return max(16, TILE_BYTES // (num_nodes * itemsize))


def default_strategy(num_nodes: int, num_fragments: int, itemsize: int = 4) -> str:
    """``"tiles"`` while a tile holds at least :data:`MIN_RUN` values of every fragment on average, else
    ``"sorted"`` (per-run work would dominate). Contiguous fragmentations always run as ``"tiles"``."""
    return "tiles" if tile_width(num_nodes, itemsize) >= MIN_RUN * num_fragments else "sorted"


def workspace_size(num_nodes: int, num_coordinates: int, strategy: str) -> int:
    """Scratch elements :func:`mix_received_fused_` needs: ``n * d`` for ``"sorted"``, else 0."""
    return num_nodes * num_coordinates if strategy == "sorted" else 0


def mix_received_fused_(
    params: Tensor,
    receivers: Tensor,
    delivered: Tensor | None,
    assignment: Tensor,
    strategy: str = "auto",
    workspace: Tensor | None = None,
) -> Tensor:
    """One round of fragment-wise mixing in place, fused into one cache-blocked pass (CPU).

    Same contract and bit-identical result as the torch index kernel
    (:func:`~lightning_mosaic.gossip.mixing.mix_received_`, which validates the arguments and calls this one):
    ``x_j[P_k] <- (x_j[P_k] + sum of the copies of fragment k node j received) / (m_jk + 1)`` from the pre-round
    values (EL, de Vos et al. 2023, Eq. 2). Work ``O(s n d)``; memory traffic about one read and
    one write of the matrix (``"tiles"``) or three (``"sorted"``); extra memory one ``(n, tile)`` block per thread,
    the ``(n, d)`` workspace of ``"sorted"``, and ``O(K n s + d)`` indices. Runs on ``torch.get_num_threads()``
    threads (at most numba's).

    Args:
        params: ``(n, d)`` float32 or float64 CPU tensor, one row per node; overwritten.
        receivers: ``(K, n, s)`` int64, ``receivers[k, i]`` = the peers node i sends fragment k to.
        delivered: Optional ``(K, n, s)`` bool, ``False`` where a message is lost (default: all arrive).
        assignment: ``(d,)`` int64, the fragment of every column (:attr:`Fragmentation.assignment`).
        strategy: One of :data:`STRATEGIES`.
        workspace: For ``"sorted"``: optional 1-D tensor of ``params``' dtype with at least ``n * d`` elements,
            reused across rounds; default: allocate per call.

    Returns:
        ``params``, mixed.

    Raises:
        RuntimeError: If numba is not installed (see :func:`available`).
        ValueError: If ``strategy`` is unknown.
    """
    if numba is None:
        raise RuntimeError("the fused mixing kernel needs numba (pip install numba)")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    x = params.detach()
    if not x.is_contiguous():
        mixed = x.contiguous()
        mix_received_fused_(mixed, receivers, delivered, assignment, strategy, workspace)
        return params.copy_(mixed)
    n, d = x.shape
    num_fragments = int(receivers.shape[0])
    rec = receivers.detach().cpu().numpy()
    dlv = np.ones(rec.shape, np.bool_) if delivered is None else delivered.detach().cpu().numpy()
    indptr, senders = _in_lists(rec, dlv, n)
    denominators = torch.from_numpy(np.diff(indptr) + 1).to(x.dtype).numpy()  # m + 1, rounded as the index kernel
    tile = tile_width(n, x.element_size())
    if strategy == "auto":
        strategy = default_strategy(n, num_fragments, x.element_size())
    if strategy == "sorted" and not _layout(assignment, tile, "tiles")[1]:
        strategy = "tiles"  # already in fragment order (the cached layout knows; no O(d) check every round)
    threads = numba.get_num_threads()
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    try:
        if strategy == "tiles":
            _mix_tiles(x.numpy(), *_layout(assignment, tile, strategy), indptr, senders, denominators, tile)
        else:
            if workspace is None or workspace.numel() < n * d:
                workspace = x.new_empty(n * d)
            xs = workspace[: n * d].view(n, d).numpy()
            _mix_sorted(x.numpy(), xs, *_layout(assignment, tile, strategy), indptr, senders, denominators, tile)
    finally:
        numba.set_num_threads(threads)
    return params
