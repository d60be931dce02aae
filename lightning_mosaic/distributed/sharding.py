"""Which ranks hold which nodes, and reductions over nodes spread across ranks. Pure ``torch.distributed`` code.

Node i of n lives on exactly one rank. With world size w, rank r holds the contiguous block
``[bounds[r], bounds[r + 1])`` where ``bounds[r] = floor(r * n / w)``: blocks differ in size by at most one node when
w does not divide n, and every rank holds at least one node (n >= w is required).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_mosaic._validation import check_int
from lightning_mosaic.gossip.metrics import ConsensusDistance


def node_bounds(num_nodes: int, world_size: int) -> list[int]:
    """Block boundaries of n nodes over w ranks: rank r holds nodes ``[bounds[r], bounds[r + 1])``.

    Args:
        num_nodes: n >= 1.
        world_size: w in [1, n].

    Returns:
        ``w + 1`` ints, ``bounds[0] = 0`` and ``bounds[w] = n``, non-decreasing with steps of ``n // w`` or
        ``n // w + 1``.

    Raises:
        ValueError: If ``num_nodes < 1`` or ``world_size`` is not in [1, n] (a rank without a node would idle).
    """
    check_int("num_nodes", num_nodes, 1)
    check_int(
        "world_size",
        world_size,
        1,
        num_nodes,
        hint=f" (every process must hold at least one of the num_nodes={num_nodes} nodes; use fewer processes)",
    )
    return [(r * num_nodes) // world_size for r in range(world_size + 1)]


def node_owner(bounds: list[int]) -> Tensor:
    """``(n,)`` int64 tensor: the rank holding each node, for ``bounds`` from :func:`node_bounds`."""
    sizes = torch.tensor([hi - lo for lo, hi in zip(bounds[:-1], bounds[1:])])
    return torch.repeat_interleave(torch.arange(len(sizes)), sizes)


def distributed_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when none is initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over all ranks (returned; the input is not modified). Identity without a process group."""
    out = tensor.clone()
    if distributed_world()[1] > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_node_values(local: Tensor, first_node: int, num_nodes: int, *, sharded: bool) -> Tensor:
    """Per-node values of all n nodes from every rank's own nodes: ``(..., m)`` here -> ``(..., n)`` everywhere.

    Args:
        local: ``(..., m)`` values of this rank's nodes ``first_node, ..., first_node + m - 1`` (last dimension).
        first_node: Global index of this rank's first node.
        num_nodes: n.
        sharded: Whether the nodes are spread over the ranks (one all-reduce of ``(..., n)``: every rank must call
            it); otherwise ``local`` holds all n nodes and is returned as is.

    Returns:
        ``(..., n)`` in ``local``'s dtype and device, the same on every rank: the slots of other ranks' nodes hold
        their values (zeros before the sum), so a reduction over it runs in the single-process order.
    """
    if not sharded:
        return local
    full = local.new_zeros((*local.shape[:-1], num_nodes))
    full[..., first_node : first_node + local.shape[-1]] = local
    return all_reduce_sum(full)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order: one ``all_gather_object`` (every rank must call it);
    ``[obj]`` without a process group."""
    world = distributed_world()[1]
    if world < 2:
        return [obj]
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, obj)
    return everyone


def broadcast_first_row_(rows: Tensor) -> None:
    """Overwrite every row of ``rows`` ``(m, ...)`` with rank 0's first row, in place (a collective: every rank must
    call it; nothing to do without a process group)."""
    if distributed_world()[1] < 2:
        return
    first = rows[0].contiguous().clone()
    dist.broadcast(first, src=0)
    rows.copy_(first.unsqueeze(0).expand_as(rows))


def _sum_over_nodes(local_sum: Tensor, local_rows: int, num_nodes: int, sharded: bool | None) -> Tensor:
    """All-reduce a per-rank sum when the rows are a shard; return it as is when they are all n nodes."""
    if sharded is None:
        sharded = local_rows < num_nodes
    return all_reduce_sum(local_sum) if sharded else local_sum


def global_row_mean(local_rows: Tensor, num_nodes: int, *, sharded: bool | None = None) -> Tensor:
    """Mean over all n nodes of per-node rows, which may be spread over ranks.

    Args:
        local_rows: ``(m, ...)`` the rows held here: all n nodes (no communication), or this rank's shard
            (m < n; an all-reduce, so every rank must call it).
        num_nodes: n, the total number of nodes over all ranks.
        sharded: Whether the rows are one rank's shard (every rank must then call this); default: ``m < n``.

    Returns:
        ``(...)`` mean, accumulated in float64 and cast back to ``local_rows.dtype``; identical on every rank.
    """
    m = local_rows.shape[0]
    total = _sum_over_nodes(local_rows.detach().to(torch.float64).sum(dim=0), m, num_nodes, sharded)
    return (total / num_nodes).to(local_rows.dtype)


class ShardedConsensusDistance(ConsensusDistance):
    """:class:`~lightning_mosaic.gossip.metrics.ConsensusDistance` (float64 workspace kept across calls) over rows
    that may be spread over the ranks of the default process group: the sums are all-reduced with
    :func:`all_reduce_sum` when the rows are a shard (m < n, or ``sharded=True``; every rank must then call it)."""

    def __init__(self) -> None:
        super().__init__(all_reduce=all_reduce_sum)


def global_consensus_distance(local_rows: Tensor, num_nodes: int, *, sharded: bool | None = None) -> Tensor:
    """Consensus distance ``(1/n) sum_i ||x_i - x_bar||^2`` of an ``(n, d)`` matrix whose rows may be spread over ranks.

    :class:`ShardedConsensusDistance` for one call (keep an instance to reuse its workspace). For a shard (m < n
    rows) it takes two all-reduces: one ``(d,)`` float64 sum for ``x_bar``, one scalar; the result is the same on
    every rank and equal to the single-process value up to float64 rounding.

    Args:
        local_rows: ``(m, d)`` all n rows, or this rank's shard.
        num_nodes: n.
        sharded: Whether the rows are one rank's shard (every rank must then call this); default: ``m < n``.

    Returns:
        Scalar tensor in ``local_rows.dtype``.
    """
    return ShardedConsensusDistance()(local_rows, num_nodes, sharded=sharded)
