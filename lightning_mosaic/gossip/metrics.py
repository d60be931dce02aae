"""Consensus and communication metrics of a gossip round. Pure tensor code (no Lightning)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

DEFAULT_WORKSPACE_BYTES = 16 * 2**20
"""Size of :class:`ConsensusDistance`'s float64 workspace: rows are converted in chunks of at most this many bytes."""


class ConsensusDistance:
    """Consensus distance ``(1/n) sum_i ||x_i - x_bar||^2`` of node rows, in a float64 workspace kept across calls.

    As reported by Mosaic Learning (arXiv 2602.04352) and Kong et al. (ICML 2021, "Consensus control for
    decentralized deep learning"), with ``x_bar = (1/n) sum_i x_i``. This is the one computation of the library:
    :func:`consensus_distance` (all rows in one process) and
    :func:`~lightning_mosaic.distributed.global_consensus_distance` (rows spread over processes) call it.

    The rows are converted to float64 in chunks of ``r = clamp(workspace_bytes // (8 d), 1, m)`` rows, each into
    the same ``(r, d)`` buffer (allocated at the first call, and again only when a call needs more rows, other
    columns or another device): a first pass adds up the column sums (``x_bar`` = their sum divided by n), a second
    one the squared deviations from ``x_bar``, computed in place in the buffer; the result is that sum divided by n.
    Reusing the buffer avoids a fresh float64 allocation per call, whose page faults cost more than the arithmetic
    on CPU; chunking keeps it independent of the number of nodes.

    Memory: ``8 r d`` bytes (at most ``max(workspace_bytes, 8 d)``) plus ``8 d`` for the column sums while the
    object lives, whatever m is.

    Args:
        all_reduce: For rows spread over processes: a function returning the sum of a tensor over all processes
            (the input unchanged), e.g. :func:`~lightning_mosaic.distributed.sharding.all_reduce_sum`; ``None``
            (default): every call holds all the rows it averages over.
        workspace_bytes: Bytes of the float64 chunk buffer (at least one row is converted at a time).
    """

    def __init__(
        self, all_reduce: Callable[[Tensor], Tensor] | None = None, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    ) -> None:
        if isinstance(workspace_bytes, bool) or not isinstance(workspace_bytes, int) or workspace_bytes < 1:
            raise ValueError(f"workspace_bytes must be an integer >= 1, got {workspace_bytes!r}")
        self.all_reduce = all_reduce
        self.workspace_bytes = workspace_bytes
        self._workspace: Tensor | None = None

    @property
    def workspace_nbytes(self) -> int:
        """Bytes held by the float64 chunk buffer now (0 before the first call)."""
        ws = self._workspace
        return 0 if ws is None else ws.numel() * ws.element_size()

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
        d = rows.shape[1]
        chunk = max(1, min(m, self.workspace_bytes // max(8 * d, 1)))
        ws = self._workspace
        if ws is None or ws.shape[0] < chunk or ws.shape[1:] != rows.shape[1:] or ws.device != rows.device:
            ws = self._workspace = torch.empty((chunk, d), dtype=torch.float64, device=rows.device)
        rows = rows.detach()
        column_sum = torch.zeros(d, dtype=torch.float64, device=rows.device)
        for start in range(0, m, chunk):
            x = ws[: min(chunk, m - start)]  # leading rows of a contiguous buffer: contiguous
            x.copy_(rows[start : start + chunk])
            column_sum += x.sum(dim=0)
        mean = (reduce(column_sum) if sharded else column_sum) / n
        total = torch.zeros((), dtype=torch.float64, device=rows.device)
        for start in range(0, m, chunk):
            x = ws[: min(chunk, m - start)]
            x.copy_(rows[start : start + chunk])
            total += x.sub_(mean).square_().sum()
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


def values_sent_per_node(num_coordinates: int, peers: float) -> int:
    """Scalar parameter values one node sends in one round: ``s * d``, whatever K is.

    Every fragment goes to s peers, and the K fragments together hold the d coordinates. ``peers`` may be a mean
    over the nodes (a fixed graph used whole: its mean degree); the result is then the mean, rounded to an integer.
    """
    return round(float(peers) * int(num_coordinates))


def bytes_sent_per_node(num_coordinates: int, peers: float, dtype: torch.dtype = torch.float32) -> int:
    """Payload bytes one node sends per round: ``s * d * itemsize`` (no headers or fragment indices counted;
    the fragmentation is fixed and known to every node, so no indices need to travel)."""
    return values_sent_per_node(num_coordinates, peers) * torch.empty((), dtype=dtype).element_size()
