"""Consensus and communication metrics of a gossip round. Pure tensor code (no Lightning)."""

from __future__ import annotations

import torch
from torch import Tensor


def consensus_distance(params: Tensor) -> Tensor:
    """Consensus distance ``(1/n) sum_i ||x_i - x_bar||^2`` of an ``(n, d)`` parameter matrix.

    As reported by Mosaic Learning (arXiv 2602.04352) and Kong et al. (ICML 2021, "Consensus control for
    decentralized deep learning"), with ``x_bar = (1/n) sum_i x_i``.

    Args:
        params: ``(n, d)`` parameter matrix, one row per node.

    Returns:
        Scalar tensor (squared parameter units), computed in float64 for accuracy then cast to ``params.dtype``.
    """
    if params.dim() != 2:
        raise ValueError(f"params must be an (n, d) matrix, got shape {tuple(params.shape)}")
    x = params.detach().to(torch.float64)
    return (x - x.mean(dim=0, keepdim=True)).square().sum(dim=1).mean().to(params.dtype)


def values_sent_per_node(num_coordinates: int, peers: int) -> int:
    """Scalar parameter values one node sends in one round: ``s * d``, whatever K is.

    Every fragment goes to s peers, and the K fragments together hold the d coordinates (DESIGN.md).
    """
    return int(peers) * int(num_coordinates)


def bytes_sent_per_node(num_coordinates: int, peers: int, dtype: torch.dtype = torch.float32) -> int:
    """Payload bytes one node sends per round: ``s * d * itemsize`` (no headers or fragment indices counted;
    the fragmentation is fixed and known to every node, so no indices need to travel)."""
    return values_sent_per_node(num_coordinates, peers) * torch.empty((), dtype=dtype).element_size()
