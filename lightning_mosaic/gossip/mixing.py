"""Fragment-wise mixing of an (n, d) parameter matrix. Pure tensor code (no Lightning)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_mosaic.gossip.fragmentation import Fragmentation


def _check(params: Tensor, matrices: Tensor, fragmentation: Fragmentation) -> None:
    if params.dim() != 2:
        raise ValueError(f"params must be an (n, d) matrix, got shape {tuple(params.shape)}")
    n, d = params.shape
    k = fragmentation.num_fragments
    if tuple(matrices.shape) != (k, n, n):
        raise ValueError(
            f"matrices must have shape (K, n, n) = ({k}, {n}, {n}) for {k} fragments and {n} nodes, "
            f"got {tuple(matrices.shape)}"
        )
    if fragmentation.num_coordinates != d:
        raise ValueError(
            f"the fragmentation covers d = {fragmentation.num_coordinates} coordinates but params has d = {d}"
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
