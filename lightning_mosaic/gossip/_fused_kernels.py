"""The numba kernels of the fused CPU mixing backend (:mod:`lightning_mosaic.gossip.fused`), in their own module so
that numba is imported, and the kernels compiled, only when the fused backend is chosen (a small model never imports
numba). Imported by :func:`lightning_mosaic.gossip.fused.available`; raises ``ImportError`` without numba.

Every kernel is compiled once per install: numba's on-disk cache (``cache=True``) is written next to this file
(``__pycache__``), or, where the install is read-only, in the user's cache folder (``~/.cache/numba``), or in
``NUMBA_CACHE_DIR`` when that is set. Where none of them is writable the kernels are compiled in every process that
uses them, silently (:func:`_jit`).
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange

if "NUMBA_THREADING_LAYER" not in os.environ:
    # numba's own thread pool, not its OpenMP layer: a second OpenMP runtime next to torch's spins its idle threads
    # against torch's (2-core machines), and GNU OpenMP is not fork-safe (DataLoader workers are forked). Set
    # NUMBA_THREADING_LAYER to choose another layer for the whole process.
    numba.config.THREADING_LAYER = "workqueue"


def _jit(**options):
    """``numba.njit(cache=True, **options)``, or without the on-disk cache where numba finds no writable place for it
    (it raises ``RuntimeError: cannot cache function ...`` when decorating): the kernel is then compiled in each
    process instead, with nothing printed."""

    def decorate(fn):
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError as error:
            if "cannot cache function" not in str(error):
                raise
            return njit(**options)(fn)

    return decorate


@_jit(nogil=True)
def in_lists(receivers, delivered, num_nodes):
    """CSR lists of the senders of every (fragment, receiver), ordered by (slot, sender), and where each message sits
    in the flattened ``(K, n, s)`` receivers (to look its weight up). Fragment-major loops: the counters of one
    fragment (``n`` of them) stay in cache."""
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
    positions = np.empty(indptr[-1], np.int64)
    for k in range(k_frags):
        for r in range(s):
            for i in range(n):
                if delivered[k, i, r]:
                    b = k * num_nodes + receivers[k, i, r]
                    senders[fill[b]] = i
                    positions[fill[b]] = (k * n + i) * s + r
                    fill[b] += 1
    return indptr, senders, positions


@_jit(nogil=True)
def tile_layout(assignment, tile):
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


@_jit(nogil=True, error_model="numpy")
def aggregate_weighted(oj, xj, xs, c, length, p, m, senders, coefs, own):
    """One (fragment, receiver) run of a weighted round: ``oj[q] = own * xj[q] + coefs[p] * xs[senders[p], c + q] +
    ...`` over the receiver's m messages, in the torch index kernel's order (own term, then the messages in list
    order), each product rounded before it is added (no fused multiply-add: numba's default ``fastmath=False``)."""
    if m == 0:
        for q in range(length):
            oj[q] = xj[q] * own
    elif m == 1:
        x1 = xs[senders[p], c : c + length]
        w1 = coefs[p]
        for q in range(length):
            oj[q] = xj[q] * own + x1[q] * w1
    elif m == 2:
        x1 = xs[senders[p], c : c + length]
        x2 = xs[senders[p + 1], c : c + length]
        w1, w2 = coefs[p], coefs[p + 1]
        for q in range(length):
            oj[q] = (xj[q] * own + x1[q] * w1) + x2[q] * w2
    else:
        x1 = xs[senders[p], c : c + length]
        x2 = xs[senders[p + 1], c : c + length]
        w1, w2 = coefs[p], coefs[p + 1]
        for q in range(length):
            oj[q] = (xj[q] * own + x1[q] * w1) + x2[q] * w2
        for pp in range(p + 2, p + m):
            xi = xs[senders[pp], c : c + length]
            wi = coefs[pp]
            for q in range(length):
                oj[q] += xi[q] * wi


@_jit(nogil=True, error_model="numpy")
def aggregate(
    xs, col0, out, t, run_ptr, run_start, run_frag, indptr, senders, denominators, coefs, self_coefs, weighted
):
    """``out[j, q] = (xs[j, col0 + q] + sum of xs[i, col0 + q] over the senders i of (fragment of q, j))
    / denominator`` for the runs of tile t, whose columns start at ``col0`` of ``xs`` in fragment order;
    ``out`` is ``(n, w)``. ``weighted``: ``out[j, q] = self_coefs[b] * xs[j, col0 + q] + sum of coefs[p] *
    xs[senders[p], col0 + q]`` instead (b the (fragment, receiver) list, p its entries)."""
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
            if weighted:
                aggregate_weighted(oj, xj, xs, col0 + a, length, p, m, senders, coefs, self_coefs[b])
                continue
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


@_jit(parallel=True, nogil=True, error_model="numpy")
def mix_tiles(
    x, order, permuted, run_ptr, run_start, run_frag, indptr, senders, denominators, coefs, self_coefs, weighted, tile
):
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
            aggregate(
                xs, 0, out, t, run_ptr, run_start, run_frag, indptr, senders, denominators, coefs, self_coefs, weighted
            )
            for j in range(n):
                xr = x[j, c0 : c0 + w]
                oj = out[j]
                for q in range(w):
                    xr[tile_order[q]] = oj[q]
        else:
            aggregate(
                x, c0, out, t, run_ptr, run_start, run_frag, indptr, senders, denominators, coefs, self_coefs, weighted
            )
            for j in range(n):
                xr = x[j, c0 : c0 + w]
                oj = out[j]
                for q in range(w):
                    xr[q] = oj[q]


@_jit(parallel=True, nogil=True, error_model="numpy")
def mix_sorted(
    x, xs, order, run_ptr, run_start, run_frag, indptr, senders, denominators, coefs, self_coefs, weighted, tile
):
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
        aggregate(
            xs, c0, out, t, run_ptr, run_start, run_frag, indptr, senders, denominators, coefs, self_coefs, weighted
        )
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
