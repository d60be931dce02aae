"""Fragment-wise mixing of an (n, d) parameter matrix. Pure tensor code (no Lightning)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_mosaic.gossip.fragmentation import Fragmentation


def _check_params(params: Tensor, fragmentation: Fragmentation) -> None:
    if params.dim() != 2:
        raise ValueError(f"params must be an (n, d) matrix, got shape {tuple(params.shape)}")
    if fragmentation.num_coordinates != params.shape[1]:
        raise ValueError(
            f"the fragmentation covers d = {fragmentation.num_coordinates} coordinates but params has "
            f"d = {params.shape[1]}"
        )


def _check(params: Tensor, matrices: Tensor, fragmentation: Fragmentation) -> None:
    _check_params(params, fragmentation)
    n = params.shape[0]
    k = fragmentation.num_fragments
    if tuple(matrices.shape) != (k, n, n):
        raise ValueError(
            f"matrices must have shape (K, n, n) = ({k}, {n}, {n}) for {k} fragments and {n} nodes, "
            f"got {tuple(matrices.shape)}"
        )


@torch.no_grad()
def mix_(params: Tensor, matrices: Tensor, fragmentation: Fragmentation) -> Tensor:
    """Apply one round of fragment-wise mixing in place: ``X[:, P_k] <- W_k @ X[:, P_k]`` for every k.

    Every fragment is aggregated from the pre-round values (the fragments are disjoint and each product is computed
    before it is written back), so the result does not depend on the order in which messages arrive
    (DESIGN.md step 4; Mosaic Learning, arXiv 2602.04352, Algorithm 1). Extra memory: one fragment, ``(n, d_k)``.

    Args:
        params: ``(n, d)`` parameter matrix, one row per node; overwritten.
        matrices: ``(K, n, n)`` row-stochastic mixing matrices (see :func:`~lightning_mosaic.gossip.mixing_matrices`).
        fragmentation: The partition of the d columns into K fragments.

    Returns:
        ``params``, mixed.

    Raises:
        ValueError: If the shapes of ``params``, ``matrices`` and ``fragmentation`` disagree.
    """
    _check(params, matrices, fragmentation)
    matrices = matrices.to(device=params.device, dtype=params.dtype)
    if fragmentation.slices is not None:
        for w, cols in zip(matrices, fragmentation.slices):
            params[:, cols] = w @ params[:, cols]
        return params
    for w, idx in zip(matrices, fragmentation.indices):
        idx = idx.to(params.device)
        params.index_copy_(1, idx, w @ params.index_select(1, idx))
    return params


def mix(params: Tensor, matrices: Tensor, fragmentation: Fragmentation) -> Tensor:
    """Out-of-place :func:`mix_`: returns the mixed ``(n, d)`` matrix and leaves ``params`` unchanged."""
    return mix_(params.detach().clone(), matrices, fragmentation)


def _check_receivers(params: Tensor, receivers: Tensor, delivered: Tensor | None, fragmentation: Fragmentation) -> None:
    _check_params(params, fragmentation)
    n, k = params.shape[0], fragmentation.num_fragments
    if receivers.dim() != 3 or tuple(receivers.shape[:2]) != (k, n):
        raise ValueError(
            f"receivers must have shape (K, n, s) with K = {k} fragments and n = {n} nodes, "
            f"got {tuple(receivers.shape)}"
        )
    if delivered is not None and delivered.shape != receivers.shape:
        raise ValueError(
            f"delivered must have the shape of receivers {tuple(receivers.shape)}, got {tuple(delivered.shape)}"
        )


@torch.no_grad()
def mix_received_(params: Tensor, receivers: Tensor, delivered: Tensor | None, fragmentation: Fragmentation) -> Tensor:
    """One round of fragment-wise mixing in place from receiver lists, without any ``n x n`` matrix.

    Computes exactly what :func:`mix_` computes with the matrices of the same graphs (up to float rounding):
    ``x_j[P_k] <- (x_j[P_k] + sum of the copies of fragment k node j received) / (m_jk + 1)`` from the pre-round
    values (DESIGN.md step 4; EL, de Vos et al. 2023, Eq. 2), as a scatter-add: all equal-sized fragments
    (:attr:`Fragmentation.groups`) are one ``(n * K_g, q)`` row block, and each of the s message slots is one
    ``index_add_`` of that block into an accumulator. An undelivered message is added to a spare row that is thrown
    away, so a node's values (even NaN) never reach a node that should not receive them. Work ``O(s n d)``, extra
    memory ``(n + 1) d`` values plus ``O(K n s)`` indices.

    Args:
        params: ``(n, d)`` parameter matrix, one row per node; overwritten.
        receivers: ``(K, n, s)`` int64, ``receivers[k, i]`` = the peers node i sends fragment k to
            (:func:`~lightning_mosaic.gossip.sample_receivers`).
        delivered: Optional ``(K, n, s)`` bool, ``False`` where that message is lost or its sender or receiver is
            offline (default: every message arrives).
        fragmentation: The partition of the d columns into K fragments.

    Returns:
        ``params``, mixed.

    Raises:
        ValueError: If the shapes of ``params``, ``receivers``, ``delivered`` and ``fragmentation`` disagree.
    """
    _check_receivers(params, receivers, delivered, fragmentation)
    n = params.shape[0]
    receivers = receivers.to(params.device)
    if delivered is not None:
        delivered = delivered.to(params.device)
    for group in fragmentation.groups:
        frags = group.fragments.to(params.device)
        kg, q = frags.numel(), group.size
        rows = n * kg
        cols = group.columns if isinstance(group.columns, slice) else group.columns.to(params.device)
        block = params[:, cols] if isinstance(cols, slice) else params.index_select(1, cols)
        source = block.reshape(rows, q)  # row i * kg + g: node i, fragment frags[g]
        # destination row of the message of slot r from (i, g): receivers[frags[g], i, r] * kg + g
        dst = receivers.index_select(0, frags).permute(2, 1, 0) * kg + torch.arange(kg, device=params.device)
        if delivered is not None:
            dst = torch.where(delivered.index_select(0, frags).permute(2, 1, 0), dst, rows)
        dst = dst.reshape(dst.shape[0], rows)
        acc = torch.empty(rows + 1, q, dtype=params.dtype, device=params.device)
        acc[:rows].copy_(source)
        acc[rows].zero_()
        for slot in dst:
            acc.index_add_(0, slot, source)
        counts = torch.bincount(dst.reshape(-1), minlength=rows + 1)[:rows].add_(1).to(params.dtype)
        mixed = acc[:rows].div_(counts[:, None]).view(n, kg * q)
        if isinstance(cols, slice):
            params[:, cols] = mixed
        else:
            params.index_copy_(1, cols, mixed)
    return params


KERNELS: tuple[str, ...] = ("auto", "dense", "index")
"""Mixing kernels: ``"dense"`` (:func:`mix_` with ``(K, n, n)`` matrices), ``"index"`` (:func:`mix_received_`)."""

INDEX_KERNEL_MIN_NODES = 32
"""Smallest n for which :func:`default_kernel` picks the index kernel (see its docstring for the measurements)."""


def default_kernel(num_nodes: int, num_fragments: int) -> str:
    """The mixing kernel ``kernel="auto"`` uses for n nodes and K fragments.

    ``"index"`` when ``n >= INDEX_KERNEL_MIN_NODES``, else ``"dense"``. The dense kernel is one ``(n, n) @ (n, d_k)``
    product per fragment (``2 n^2 d`` flops, plus K Python iterations); the index kernel does ``s + 3`` passes over
    the ``(n, d)`` matrix whatever n and K are. Measured with ``python -m benchmarks.run`` (table in
    ``docs/benchmarks.md``): see there for the ratios to the copy floor on which this rule rests.
    """
    return "index" if num_nodes >= INDEX_KERNEL_MIN_NODES else "dense"
