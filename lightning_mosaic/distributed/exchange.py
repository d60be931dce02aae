"""Fragment-wise mixing of node rows spread over ranks: each rank sends only the fragments its peers need.

Pure ``torch.distributed`` code (no Lightning). Every rank draws the same round graphs from the shared seed, as
``(K, n, s)`` receiver lists (:meth:`~lightning_mosaic.gossip.FragmentGossip.next_graphs`; no ``n x n`` tensor), so
every rank knows, without any extra message, which rows of which fragment every other rank needs: rank q needs
fragment k of node j when a node held by q receives it. One ``all_to_all_single`` per round moves exactly those
pieces, in one contiguous buffer per destination (fragment-major, then node order), and each rank then aggregates
``(own + sum received) / (count + 1)`` for its nodes (or, in a weighted round, ``self weight * own + sum of weight *
received``, the weights from :func:`~lightning_mosaic.gossip.mixing.aggregation_weights` of the full round on every
rank) with the one implementation of that rule, :func:`~lightning_mosaic.gossip.mixing.average_received_`.

Volume: a node's fragment travels at most once to each other rank, however many of that rank's nodes receive it,
and never to its own rank, so the values a rank sends per round are at most ``m * s * d`` (m nodes on the rank; the
single-process ideal of s * d values per node) and usually fewer. :class:`ExchangeStats` reports both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_mosaic.distributed.sharding import node_owner
from lightning_mosaic.gossip.fragmentation import Fragmentation
from lightning_mosaic.gossip.mixing import aggregation_weights, average_received_
from lightning_mosaic.gossip.protocol import RoundGraphs


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
        peers: s (messages per node per fragment; a mean over the nodes on a fixed graph used whole), only for
            :attr:`ExchangeStats.ideal_values_sent`.
        group: Process group (default: the world).

    Raises:
        ValueError: If ``rank`` is not in ``[0, w)``.
    """

    def __init__(
        self,
        bounds: list[int],
        rank: int,
        fragmentation: Fragmentation,
        peers: float,
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
        self._owner = node_owner(self.bounds)  # (n,) rank of every node, fixed for the run

    def _messages(self, graphs: RoundGraphs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The round's delivered messages as ``(fragment, sender, receiver, position)`` index tensors, each ``(M,)``
        (``position``: the message's index in the flattened ``(K, n, s)`` receivers)."""
        k_count, n, s = graphs.receivers.shape
        fragment = torch.arange(k_count).view(k_count, 1, 1).expand(k_count, n, s)
        sender = torch.arange(n).view(1, n, 1).expand(k_count, n, s)
        position = torch.arange(k_count * n * s).view(k_count, n, s)
        if graphs.delivered is None:
            return fragment.reshape(-1), sender.reshape(-1), graphs.receivers.reshape(-1), position.reshape(-1)
        keep = graphs.delivered
        return fragment[keep], sender[keep], graphs.receivers[keep], position[keep]

    @torch.no_grad()
    def mix_(self, local: Tensor, graphs: RoundGraphs, offline: Tensor | None = None) -> ExchangeStats:
        """Mix this rank's rows in place.

        Args:
            local: ``(m, d)`` rows of nodes ``[bounds[rank], bounds[rank + 1])``; overwritten with
                ``x_i[P_k] <- (x_i[P_k] + sum of the fragments k node i received) / (received + 1)``, or, when
                ``graphs.weights`` is given, ``x_i[P_k] <- (1 - sum of w_m) x_i[P_k] + sum of w_m x_src(m)[P_k]``
                over the messages m node i received, from the pre-round values (the same update as
                :func:`~lightning_mosaic.gossip.mix_received_`).
            graphs: The round's receiver lists (``(K, n, s)``, from
                :meth:`~lightning_mosaic.gossip.FragmentGossip.next_graphs`) and optional weights, the same on every
                rank; no ``n x n`` tensor is built.
            offline: Optional ``(n,)`` bool mask, the same on every rank, of nodes isolated this round (``graphs``
                must have been drawn with it, so none of their messages is delivered). Their values (possibly NaN)
                are neither sent nor used, and they keep them.

        Returns:
            What this rank sent.

        Raises:
            ValueError: If the shapes disagree with the bounds and the fragmentation, or the weights are invalid
                (:func:`~lightning_mosaic.gossip.mixing.aggregation_weights`).
            RuntimeError: From the collective, if a rank fails or the process group times out.
        """
        m, d = self.hi - self.lo, self.fragmentation.num_coordinates
        if tuple(local.shape) != (m, d):
            raise ValueError(
                f"local rows must be shaped (m, d) = ({m}, {d}) on rank {self.rank}, got {tuple(local.shape)}"
            )
        k_count, n = self.fragmentation.num_fragments, self.num_nodes
        if graphs.receivers.dim() != 3 or tuple(graphs.receivers.shape[:2]) != (k_count, n):
            raise ValueError(
                f"graphs.receivers must be shaped (K, n, s) = ({k_count}, {n}, s), got {tuple(graphs.receivers.shape)}"
            )
        coefficients = None
        if graphs.weights is not None:  # the whole round's weights, the same numbers on every rank
            coefficients = aggregation_weights(graphs.receivers, graphs.delivered, graphs.weights, local.dtype)
        fragment, sender, receiver, position = self._messages(graphs)  # CPU: decisions only
        # needed[k, q, j]: a node of rank q receives node j's fragment k this round
        needed = torch.zeros(k_count, self.world_size, n, dtype=torch.bool)
        needed[fragment, self._owner[receiver], sender] = True
        device = local.device
        if self.fragmentation.assignment.device != device:
            self.fragmentation = self.fragmentation.to(device)
        indices = self.fragmentation.indices
        sizes = self.fragmentation.sizes
        own_offline = None
        if offline is not None and bool(offline.any()):
            own_offline = offline.to(device="cpu", dtype=torch.bool)[self.lo : self.hi].to(device)
        # Pre-round values per fragment (offline rows zeroed: they are never sent, and NaN must not enter a sum).
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

        # Per fragment, the rows this rank's nodes read: own rows plus the received ones (other rows stay zero and
        # are never read).
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
        # Aggregate what this rank's nodes received: (own + sum received) / (count + 1), or weighted.
        mine = (receiver >= self.lo) & (receiver < self.hi)
        fragment, sender, receiver, position = fragment[mine], sender[mine], receiver[mine] - self.lo, position[mine]
        kept = local[own_offline].clone() if own_offline is not None else None
        for k, idx in enumerate(indices):
            of_k = fragment == k
            rows, sources = receiver[of_k].to(device), sender[of_k].to(device)
            if coefficients is None:
                mixed = average_received_(pieces[k], [(full[k][sources], rows)], torch.empty_like(pieces[k]))
            else:
                message, own = coefficients
                weight = message.reshape(-1)[position[of_k]].to(device)
                self_weight = own[k, self.lo : self.hi].to(device)
                messages = [(full[k][sources], rows, weight)]
                mixed = average_received_(pieces[k], messages, torch.empty_like(pieces[k]), self_weight=self_weight)
            local.index_copy_(1, idx, mixed)
        if own_offline is not None:
            local[own_offline] = kept
        values = int(send.numel())
        return ExchangeStats(
            values_sent=values,
            bytes_sent=values * local.element_size(),
            ideal_values_sent=round(m * self.peers * d),
        )
