"""Consensus and communication metrics of a gossip round. Pure tensor code (no Lightning)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class ConsensusDistance:
    """Consensus distance ``(1/n) sum_i ||x_i - x_bar||^2`` of node rows, in a float64 workspace kept across calls.

    As reported by Mosaic Learning (arXiv 2602.04352) and Kong et al. (ICML 2021, "Consensus control for
    decentralized deep learning"), with ``x_bar = (1/n) sum_i x_i``. This is the one computation of the library:
    :func:`consensus_distance` (all rows in one process) and
    :func:`~lightning_mosaic.distributed.global_consensus_distance` (rows spread over processes) call it.

    The rows are copied into one ``(m, d)`` float64 buffer allocated at the first call (and again only when a call
    needs more rows, other columns or another device), ``x_bar`` is the column sum divided by n, and the result is
    the sum of the squared deviations divided by n, computed in place in that buffer. Reusing the buffer avoids a
    fresh ``(m, d)`` float64 allocation per call, whose page faults cost more than the arithmetic on CPU.

    Memory: ``8 m d`` bytes while the object lives (fewer rows than the buffer holds use its leading rows).

    Args:
        all_reduce: For rows spread over processes: a function returning the sum of a tensor over all processes
            (the input unchanged), e.g. :func:`~lightning_mosaic.distributed.sharding.all_reduce_sum`; ``None``
            (default): every call holds all the rows it averages over.
    """

    def __init__(self, all_reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        self.all_reduce = all_reduce
        self._workspace: Tensor | None = None

    def __call__(self, rows: Tensor, num_nodes: int | None = None, *, sharded: bool | None = None) -> Tensor:
        """The consensus distance of ``rows``.

        Args:
            rows: ``(m, d)`` parameter rows, one per node: all n nodes, or this process's share of them.
            num_nodes: n, the number of nodes over all processes (default ``m``).
            sharded: Whether ``rows`` is one process's share (every process must then call this: two calls of
                ``all_reduce``, a ``(d,)`` float64 column sum and a scalar); default ``m < n``.

        Returns:
            Scalar tensor in ``rows.dtype`` (squared parameter units), identical on every process.

        Raises:
            ValueError: If ``rows`` is not 2-D, or ``sharded`` without an ``all_reduce``.
        """
        if rows.dim() != 2:
            raise ValueError(f"rows must be an (m, d) matrix, got shape {tuple(rows.shape)}")
        m = rows.shape[0]
        n = m if num_nodes is None else num_nodes
        if sharded is None:
            sharded = m < n
        reduce = self.all_reduce
        if sharded and reduce is None:
            raise ValueError(
                f"{m} rows of n={n} nodes are one process's share: ConsensusDistance needs an all_reduce to sum over "
                "the processes (lightning_mosaic.distributed.global_consensus_distance)"
            )
        ws = self._workspace
        if ws is None or ws.shape[0] < m or ws.shape[1:] != rows.shape[1:] or ws.device != rows.device:
            ws = self._workspace = torch.empty(rows.shape, dtype=torch.float64, device=rows.device)
        x = ws[:m]  # leading rows of a contiguous buffer: contiguous, so the sums run in the same order
        x.copy_(rows.detach())
        column_sum = x.sum(dim=0)
        mean = (reduce(column_sum) if sharded else column_sum) / n
        total = x.sub_(mean).square_().sum()
        if sharded:
            total = reduce(total)
        return (total / n).to(rows.dtype)


def consensus_distance(params: Tensor) -> Tensor:
    """Consensus distance ``(1/n) sum_i ||x_i - x_bar||^2`` of an ``(n, d)`` parameter matrix (see
    :class:`ConsensusDistance`).

    Args:
        params: ``(n, d)`` parameter matrix, one row per node.

    Returns:
        Scalar tensor (squared parameter units), computed in float64 then cast to ``params.dtype``.

    Raises:
        ValueError: If ``params`` is not 2-D.
    """
    if params.dim() != 2:
        raise ValueError(f"params must be an (n, d) matrix, got shape {tuple(params.shape)}")
    return ConsensusDistance()(params)


def values_sent_per_node(num_coordinates: int, peers: int) -> int:
    """Scalar parameter values one node sends in one round: ``s * d``, whatever K is.

    Every fragment goes to s peers, and the K fragments together hold the d coordinates.
    """
    return int(peers) * int(num_coordinates)


def bytes_sent_per_node(num_coordinates: int, peers: int, dtype: torch.dtype = torch.float32) -> int:
    """Payload bytes one node sends per round: ``s * d * itemsize`` (no headers or fragment indices counted;
    the fragmentation is fixed and known to every node, so no indices need to travel)."""
    return values_sent_per_node(num_coordinates, peers) * torch.empty((), dtype=dtype).element_size()
