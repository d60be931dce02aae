"""Fused CPU mixing kernel: one cache-blocked pass over the ``(n, d)`` parameter matrix (numba). Pure numeric code.

The index kernel (:func:`~lightning_mosaic.gossip.mixing.mix_received_`) written with torch operators makes
``s + 3`` passes over the whole matrix (copy into an accumulator, one ``index_add_`` per message slot, a division),
plus a gather and a scatter of every column under the random fragmentation. This kernel computes the same values in
one pass: the columns are cut into tiles small enough that the ``(n, tile)`` block of every node stays in the core's
cache, and each output value is summed there from its own node and the senders of its fragment. Main memory then
sees one read and one write of the matrix, like a copy.

Every value is summed in the order the torch index kernel sums it (own value first, then the messages by slot, then
by sender) and divided the same way, or, in a weighted round, with each term multiplied by the same weight first, so
both kernels give bit-identical results.

This module itself does not import numba: the kernels live in ``_fused_kernels.py`` and are imported (and compiled,
or loaded from numba's on-disk cache) the first time :func:`available` or :func:`mix_received_fused_` runs. The
``backend="auto"`` rule (:func:`~lightning_mosaic.gossip.mixing.default_backend`) only gets there for matrices of at
least :data:`~lightning_mosaic.gossip.mixing.FUSED_MIN_VALUES` values, so a small model never imports numba.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

TILE_BYTES = 1 << 20
"""Bytes of one ``(n, tile)`` block, from which the tile width in columns follows (:func:`tile_width`). 1 MiB: between
the per-core L2 caches of the two x86-64 machines measured in ``docs/benchmarks.md`` (512 KiB, 2 MiB); at n = 1024,
K = 8 (contiguous) 1 MiB tiles took 1.3x the copy floor against 2.2x for 256 KiB and 1.8x for 4 MiB."""


@functools.cache
def _kernels() -> ModuleType | None:
    """The numba kernels, imported on the first call (each kernel then compiles on its own first call, or loads from
    numba's on-disk cache); ``None`` where numba cannot be imported."""
    try:  # numba is a dependency; the guard keeps the torch kernels usable where it cannot be installed
        importlib.import_module("numba")
    except ImportError:
        return None
    return importlib.import_module("lightning_mosaic.gossip._fused_kernels")


def available() -> bool:
    """Whether the fused kernel can run here (numba is importable). The first call imports numba: ask only where the
    fused backend is wanted."""
    return _kernels() is not None


_LAYOUTS: dict[tuple[int, int, str], tuple] = {}


def _layout(assignment: Tensor, tile: int, strategy: str) -> tuple:
    """The column layout of a fragmentation for one strategy and tile width, computed once and kept (keyed by the
    assignment tensor, which a :class:`Fragmentation` holds for the whole run)."""
    key = (id(assignment), tile, strategy)
    cached = _LAYOUTS.get(key)
    if cached is not None and cached[0] is assignment:
        return cached[1]
    a = assignment.detach().cpu().numpy()
    tile_layout = _kernels().tile_layout
    if strategy == "tiles":
        order, run_ptr, run_start, run_frag = tile_layout(a, tile)
        layout = (order, bool((np.diff(a) < 0).any()), run_ptr, run_start, run_frag)
    else:
        order = np.argsort(a, kind="stable").astype(np.int32)
        _, run_ptr, run_start, run_frag = tile_layout(a[order], tile)
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
    coefficients: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """One round of fragment-wise mixing in place, fused into one cache-blocked pass (CPU).

    Same contract and bit-identical result as the torch index kernel
    (:func:`~lightning_mosaic.gossip.mixing.mix_received_`, which validates the arguments and calls this one):
    ``x_j[P_k] <- (x_j[P_k] + sum of the copies of fragment k node j received) / (m_jk + 1)`` from the pre-round
    values (EL, de Vos et al. 2023, Eq. 2), or with ``coefficients`` the weighted round
    ``x_j[P_k] <- self[k, j] x_j[P_k] + sum of message[k, i, r] x_i[P_k]`` over the messages j received. Work
    ``O(s n d)``; memory traffic about one read and one write of the matrix (``"tiles"``) or three (``"sorted"``);
    extra memory one ``(n, tile)`` block per thread, the ``(n, d)`` workspace of ``"sorted"``, and ``O(K n s + d)``
    indices. Runs on ``torch.get_num_threads()`` threads (at most numba's).

    Args:
        params: ``(n, d)`` float32 or float64 CPU tensor, one row per node; overwritten.
        receivers: ``(K, n, s)`` int64, ``receivers[k, i]`` = the peers node i sends fragment k to.
        delivered: Optional ``(K, n, s)`` bool, ``False`` where a message is lost (default: all arrive).
        assignment: ``(d,)`` int64, the fragment of every column (:attr:`Fragmentation.assignment`).
        strategy: One of :data:`STRATEGIES`.
        workspace: For ``"sorted"``: optional 1-D tensor of ``params``' dtype with at least ``n * d`` elements,
            reused across rounds; default: allocate per call.
        coefficients: Optional ``(message (K, n, s), self (K, n))`` weights in ``params``' dtype, from
            :func:`~lightning_mosaic.gossip.mixing.aggregation_weights` (computed there once, so that every backend
            multiplies by the same numbers); ``None``: the EL rule.

    Returns:
        ``params``, mixed.

    Raises:
        RuntimeError: If numba is not installed (see :func:`available`).
        ValueError: If ``strategy`` is unknown.
    """
    kernels = _kernels()
    if kernels is None:
        raise RuntimeError("the fused mixing kernel needs numba (pip install numba)")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    x = params.detach()
    if not x.is_contiguous():
        mixed = x.contiguous()
        mix_received_fused_(mixed, receivers, delivered, assignment, strategy, workspace, coefficients)
        return params.copy_(mixed)
    n, d = x.shape
    num_fragments = int(receivers.shape[0])
    rec = receivers.detach().cpu().numpy()
    dlv = np.ones(rec.shape, np.bool_) if delivered is None else delivered.detach().cpu().numpy()
    indptr, senders, positions = kernels.in_lists(rec, dlv, n)
    denominators = torch.from_numpy(np.diff(indptr) + 1).to(x.dtype).numpy()  # m + 1, rounded as the index kernel
    weighted = coefficients is not None
    if weighted:  # each message's weight in list order, each (fragment, receiver)'s self weight
        message, own = coefficients
        coefs = message.detach().to(device="cpu", dtype=x.dtype).reshape(-1).numpy()[positions]
        self_coefs = np.ascontiguousarray(own.detach().to(device="cpu", dtype=x.dtype).reshape(-1).numpy())
    else:
        coefs = self_coefs = np.empty(0, denominators.dtype)
    weighting = (coefs, self_coefs, weighted)
    tile = tile_width(n, x.element_size())
    if strategy == "auto":
        strategy = default_strategy(n, num_fragments, x.element_size())
    if strategy == "sorted" and not _layout(assignment, tile, "tiles")[1]:
        strategy = "tiles"  # already in fragment order (the cached layout knows; no O(d) check every round)
    numba = kernels.numba
    threads = numba.get_num_threads()
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    try:
        if strategy == "tiles":
            kernels.mix_tiles(
                x.numpy(), *_layout(assignment, tile, strategy), indptr, senders, denominators, *weighting, tile
            )
        else:
            if workspace is None or workspace.numel() < n * d:
                workspace = x.new_empty(n * d)
            xs = workspace[: n * d].view(n, d).numpy()
            kernels.mix_sorted(
                x.numpy(), xs, *_layout(assignment, tile, strategy), indptr, senders, denominators, *weighting, tile
            )
    finally:
        numba.set_num_threads(threads)
    return params
