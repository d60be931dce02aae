"""Fragment-wise mixing of node rows spread over ranks: each rank sends only the fragments its peers need.

Pure ``torch.distributed`` code (no Lightning). Every rank draws the same ``(K, n, n)`` mixing matrices from the shared
seed (:class:`~lightning_mosaic.gossip.FragmentGossip`), so every rank knows, without any extra message, which rows
of which fragment every other rank needs: rank q needs fragment k of node j when some node i held by q has
``W_k[i, j] != 0``. One ``all_to_all_single`` per round moves exactly those pieces, in one contiguous buffer per
destination (fragment-major, then node order), and each rank then computes ``W_k[own rows] @ X[:, P_k]`` for every k.

Volume: a node's fragment travels at most once to each other rank, however many of that rank's nodes receive it,
and never to its own rank, so the values a rank sends per round are at most ``m * s * d`` (m nodes on the rank; the
single-process ideal of s * d values per node) and usually fewer. :class:`ExchangeStats` reports both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_mosaic.gossip.fragmentation import Fragmentation


@dataclass(frozen=True)
class ExchangeStats:
    """What one rank sent in one round.

    Attributes:
        values_sent: Scalar parameter values this rank sent to other ranks.
        bytes_sent: ``values_sent`` times the element size (payload only).
        ideal_values_sent: ``m * s * d``: what its m nodes would send as separate processes (one node each).
    """

    values_sent: int
    bytes_sent: int
    ideal_values_sent: int


class ShardedMixer:
    """Applies a round's mixing matrices to node rows spread over the ranks of a process group.

    Args:
        bounds: Node block boundaries (``w + 1`` ints, see :func:`~lightning_mosaic.distributed.node_bounds`);
            rank r holds nodes ``[bounds[r], bounds[r + 1])``.
        rank: This process's rank in ``group``.
        fragmentation: The fixed fragmentation (identical on every rank).
        peers: s, only for :attr:`ExchangeStats.ideal_values_sent`.
        group: Process group (default: the world).

    Raises:
        ValueError: If ``rank`` is not in ``[0, w)``.
    """

    def __init__(
        self,
        bounds: list[int],
        rank: int,
        fragmentation: Fragmentation,
        peers: int,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        world = len(bounds) - 1
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}) for {world} node blocks, got {rank}")
        self.bounds = list(bounds)
        self.rank = rank
        self.world_size = world
        self.fragmentation = fragmentation
        self.peers = peers
        self.group = group
        self.num_nodes = bounds[-1]
        self.lo, self.hi = bounds[rank], bounds[rank + 1]

    def _needed(self, matrices: Tensor) -> Tensor:
        """``(K, w, n)`` bool: ``[k, q, j]`` is True when a node of rank q gives node j's fragment k nonzero weight."""
        nonzero = matrices != 0
        return torch.stack([nonzero[:, lo:hi].any(dim=1) for lo, hi in zip(self.bounds[:-1], self.bounds[1:])], dim=1)

    @torch.no_grad()
    def mix_(self, local: Tensor, matrices: Tensor, offline: Tensor | None = None) -> ExchangeStats:
        """Mix this rank's rows in place.

        Args:
            local: ``(m, d)`` rows of nodes ``[bounds[rank], bounds[rank + 1])``; overwritten with
                ``X'[i, P_k] = sum_j W_k[i, j] X[j, P_k]`` (pre-round values on the right, as in
                :func:`~lightning_mosaic.gossip.mix_`).
            matrices: ``(K, n, n)`` mixing matrices of the round, the same on every rank.
            offline: Optional ``(n,)`` bool mask, the same on every rank, of nodes isolated this round; their rows
                must be the identity in ``matrices`` and nobody gives them weight. Their values (possibly NaN) are
                neither sent nor used.

        Returns:
            What this rank sent.

        Raises:
            ValueError: If the shapes disagree with the bounds and the fragmentation.
            RuntimeError: From the collective, if a rank fails or the process group times out.
        """
        m, d = self.hi - self.lo, self.fragmentation.num_coordinates
        if tuple(local.shape) != (m, d):
            raise ValueError(
                f"local rows must be shaped (m, d) = ({m}, {d}) on rank {self.rank}, got {tuple(local.shape)}"
            )
        k_count, n = self.fragmentation.num_fragments, self.num_nodes
        if tuple(matrices.shape) != (k_count, n, n):
            raise ValueError(f"matrices must be shaped (K, n, n) = ({k_count}, {n}, {n}), got {tuple(matrices.shape)}")
        matrices = matrices.to("cpu")
        needed = self._needed(matrices)  # (K, w, n), on CPU: decisions only
        device = local.device
        if self.fragmentation.assignment.device != device:
            self.fragmentation = self.fragmentation.to(device)
        indices = self.fragmentation.indices
        sizes = self.fragmentation.sizes
        own_offline = None
        if offline is not None and bool(offline.any()):
            own_offline = offline.to(device="cpu", dtype=torch.bool)[self.lo : self.hi].to(device)
        # Pre-round values per fragment (offline rows zeroed so that 0 * NaN never enters a product).
        pieces = [local.index_select(1, idx) for idx in indices]
        if own_offline is not None:
            for piece in pieces:
                piece[own_offline] = 0

        send_chunks: list[Tensor] = []
        send_splits, recv_splits = [], []
        for q, (qlo, qhi) in enumerate(zip(self.bounds[:-1], self.bounds[1:])):
            if q == self.rank:
                send_splits.append(0)
                recv_splits.append(0)
                continue
            sent = 0
            for k in range(k_count):
                rows = needed[k, q, self.lo : self.hi].nonzero().flatten()
                if rows.numel():
                    send_chunks.append(pieces[k][rows.to(device)].reshape(-1))
                    sent += rows.numel() * sizes[k]
            send_splits.append(sent)
            recv_splits.append(sum(int(needed[k, self.rank, qlo:qhi].sum()) * sizes[k] for k in range(k_count)))
        send = torch.cat(send_chunks) if send_chunks else local.new_empty(0)
        recv = local.new_empty(sum(recv_splits))
        if self.world_size > 1:
            dist.all_to_all_single(recv, send, recv_splits, send_splits, group=self.group)

        # Rebuild, per fragment, the rows this rank's nodes read: own rows plus the received ones; rows nobody
        # here reads stay zero and have zero weight.
        full = [local.new_zeros(n, size) for size in sizes]
        for k in range(k_count):
            full[k][self.lo : self.hi] = pieces[k]
        offset = 0
        for q, (qlo, qhi) in enumerate(zip(self.bounds[:-1], self.bounds[1:])):
            if q == self.rank:
                continue
            for k in range(k_count):
                rows = needed[k, self.rank, qlo:qhi].nonzero().flatten() + qlo
                count = rows.numel() * sizes[k]
                if count:
                    full[k][rows.to(device)] = recv[offset : offset + count].view(rows.numel(), sizes[k])
                    offset += count
        own = matrices[:, self.lo : self.hi].to(device=device, dtype=local.dtype)  # (K, m, n)
        kept = local[own_offline].clone() if own_offline is not None else None
        for k, idx in enumerate(indices):
            local.index_copy_(1, idx, own[k] @ full[k])
        if own_offline is not None:
            local[own_offline] = kept
        values = int(send.numel())
        return ExchangeStats(
            values_sent=values,
            bytes_sent=values * local.element_size(),
            ideal_values_sent=m * self.peers * d,
        )
