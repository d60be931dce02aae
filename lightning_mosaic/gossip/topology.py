"""Per-round random communication graphs and the mixing matrices they induce.

Pure tensor code (no Lightning). All randomness comes from a ``torch.Generator`` owned by the caller; one independent
graph is drawn per fragment per round, fragments in order 0..K-1. EL-Local and EL-Oracle draw among all nodes;
:func:`graph_receivers` draws over a fixed base graph (:mod:`~lightning_mosaic.gossip.graphs`).

Conventions: ``adjacency[k, j, i]`` is the number of copies of fragment k that node j *receives* from node i in this
round (0 or 1); row j of the mixing matrix of fragment k is node j's aggregation weights.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal, get_args

import torch
from torch import Tensor

from lightning_mosaic._validation import check_int

TopologyName = Literal["el-local", "el-oracle"]
TOPOLOGIES: tuple[str, ...] = get_args(TopologyName)

MAX_GRAPH_TRIES = 1000
"""Attempts of the pairing algorithm before :func:`random_regular_graph` gives up."""


def validate_topology(topology: str, num_nodes: int, peers: int) -> None:
    """Check that ``topology`` can connect ``num_nodes`` nodes with ``peers`` peers each.

    Raises:
        ValueError: If ``topology`` is unknown, ``num_nodes`` < 2, ``peers`` is not in [1, num_nodes - 1], or
            ``topology == "el-oracle"`` and ``num_nodes * peers`` is odd (no s-regular graph exists).
    """
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology must be one of {TOPOLOGIES}, got {topology!r}")
    check_int("num_nodes (n)", num_nodes, 2)
    check_int("peers (s)", peers, 1, num_nodes - 1, hint=f" (at most n - 1 for n = {num_nodes} nodes)")
    if topology == "el-oracle" and (num_nodes * peers) % 2:
        raise ValueError(
            f"topology='el-oracle' needs n * s even (an s-regular graph on n nodes exists only then), got "
            f"n = {num_nodes}, peers (s) = {peers}; use an even s or an even n"
        )


DENSE_DRAW_LIMIT = 1 << 22
"""Largest ``K * n * n`` for which a round's random numbers are drawn as dense ``(K, n, n)`` tensors.

Up to this size (16 MiB of float32 scores: n = 64 with K <= 1024, n = 256 with K <= 64, n = 1024 with K <= 4) graphs
and message drops are drawn exactly as in the first releases (one ``torch.rand(K, n, n)`` each), so every seeded
result published for such sizes is unchanged. Above it, draws cost ``O(K n s)`` (:func:`el_local_receivers_sparse`,
one uniform per message for drops) instead of ``O(K n^2)``: the same distributions, another random stream.
"""


def dense_draw(num_nodes: int, num_fragments: int) -> bool:
    """Whether one round of ``num_fragments`` graphs on ``num_nodes`` nodes is drawn densely
    (``K * n * n <= DENSE_DRAW_LIMIT``)."""
    return num_fragments * num_nodes * num_nodes <= DENSE_DRAW_LIMIT


def el_local_receivers_dense(num_nodes: int, peers: int, num_fragments: int, generator: torch.Generator) -> Tensor:
    """EL-Local receivers from dense scores: the s smallest of n - 1 i.i.d. uniform scores per sender, which form a
    uniformly random s-subset. Draws one ``torch.rand(K, n, n)``; time and memory ``O(K n^2)``.

    Returns:
        ``(K, n, s)`` int64, ``receivers[k, i]`` = the s distinct peers node i sends fragment k to.
    """
    scores = torch.rand(num_fragments, num_nodes, num_nodes, generator=generator)
    scores.diagonal(dim1=1, dim2=2).fill_(2.0)  # never pick yourself
    return scores.topk(peers, dim=2, largest=False).indices


def el_local_receivers_sparse(num_nodes: int, peers: int, num_fragments: int, generator: torch.Generator) -> Tensor:
    """EL-Local receivers by Floyd's algorithm vectorized over the K * n senders: time ``O(K n s^2)``, memory
    ``O(K n s)``, no ``n x n`` tensor.

    Floyd's subset sampling (Bentley and Floyd, "Programming pearls: a sample of brilliance", CACM 30(9), 1987): for
    j = N - s, ..., N - 1, draw t uniform in [0, j] and add t, or j if t was already chosen; the result is a uniformly
    random s-subset of {0, ..., N - 1}. Here N = n - 1 and value v maps to peer v + (v >= i), so node i never picks
    itself. All draws come from ``generator``.

    Returns:
        ``(K, n, s)`` int64 receivers, distributed as :func:`el_local_receivers_dense` (another random stream).
    """
    rows, candidates = num_fragments * num_nodes, num_nodes - 1
    chosen = torch.empty(rows, peers, dtype=torch.long)
    for t, j in enumerate(range(candidates - peers, candidates)):
        draw = torch.randint(0, j + 1, (rows,), generator=generator)
        taken = (chosen[:, :t] == draw[:, None]).any(dim=1)
        chosen[:, t] = torch.where(taken, j, draw)
    chosen = chosen.view(num_fragments, num_nodes, peers)
    sender = torch.arange(num_nodes).view(1, num_nodes, 1)
    return chosen + (chosen >= sender).long()


def el_local_receivers(num_nodes: int, peers: int, num_fragments: int, generator: torch.Generator) -> Tensor:
    """Draw EL-Local graphs as receiver lists: every node sends each fragment to ``peers`` distinct peers chosen
    uniformly from the other n - 1 nodes, independently per fragment.

    Epidemic Learning, EL-Local (de Vos et al., NeurIPS 2023, Algorithm 1); one graph per fragment (Mosaic Learning,
    arXiv 2602.04352). Dense scores (:func:`el_local_receivers_dense`) when :func:`dense_draw` holds; otherwise
    Floyd's algorithm (:func:`el_local_receivers_sparse`) when s^2 <= n, else dense scores one fragment at a time
    (memory ``O(n^2)``, time ``O(K n^2)``, which the output size ``K n s`` with s^2 > n nearly reaches anyway).

    Args:
        num_nodes: n >= 2.
        peers: s in [1, n - 1].
        num_fragments: K >= 1, one independent graph each.
        generator: Source of randomness (CPU ``torch.Generator``); advanced by this call.

    Returns:
        ``(K, n, s)`` int64 tensor; ``receivers[k, i]`` holds the s distinct receivers of node i's fragment k.
    """
    if dense_draw(num_nodes, num_fragments):
        return el_local_receivers_dense(num_nodes, peers, num_fragments, generator)
    if peers * peers <= num_nodes:
        return el_local_receivers_sparse(num_nodes, peers, num_fragments, generator)
    return torch.cat([el_local_receivers_dense(num_nodes, peers, 1, generator) for _ in range(num_fragments)])


def receivers_to_adjacency(receivers: Tensor, delivered: Tensor | None = None) -> Tensor:
    """Dense received-copies counts from receiver lists.

    Args:
        receivers: ``(K, n, s)`` int64, ``receivers[k, i, r]`` = the r-th receiver of node i's fragment k.
        delivered: Optional ``(K, n, s)`` bool: whether that message arrives (default: all do).

    Returns:
        ``(K, n, n)`` float32, ``adjacency[k, j, i]`` = copies of fragment k node j receives from node i.
    """
    k, n, _ = receivers.shape
    values = torch.ones(receivers.shape) if delivered is None else delivered.to(torch.float32)
    sends = torch.zeros(k, n, n)
    sends.scatter_add_(2, receivers, values)  # sends[k, i, j]: copies i -> j
    return sends.transpose(1, 2).contiguous()


def el_local_adjacency(num_nodes: int, peers: int, num_fragments: int, generator: torch.Generator) -> Tensor:
    """Draw EL-Local graphs (:func:`el_local_receivers`) as dense adjacency.

    Args:
        num_nodes: n >= 2.
        peers: s in [1, n - 1].
        num_fragments: K >= 1, one independent graph each.
        generator: Source of randomness (CPU ``torch.Generator``).

    Returns:
        ``(K, n, n)`` float32 tensor, ``adjacency[k, j, i] = 1`` if node i sends fragment k to node j. Columns sum to
        s; row sums (in-degrees) are random with mean s.
    """
    return receivers_to_adjacency(el_local_receivers(num_nodes, peers, num_fragments, generator))


def random_regular_graph(num_nodes: int, degree: int, generator: torch.Generator) -> Tensor:
    """Draw a random ``degree``-regular simple undirected graph on ``num_nodes`` nodes.

    The pairing algorithm of Steger and Wormald (1999), as implemented by ``networkx.random_regular_graph`` (the
    generator the EL reference code, decentralizepy, uses for EL-Oracle), with shuffles drawn from ``generator``.

    Args:
        num_nodes: n >= 2.
        degree: s in [1, n - 1] with n * s even.
        generator: Source of randomness (CPU ``torch.Generator``).

    Returns:
        ``(n, n)`` float32 symmetric 0/1 adjacency matrix with zero diagonal and every row summing to ``degree``.

    Raises:
        ValueError: For an impossible (n, s), see :func:`validate_topology`.
        RuntimeError: If no graph was found in :data:`MAX_GRAPH_TRIES` attempts (not observed in practice).
    """
    neighbours = random_regular_neighbours(num_nodes, degree, generator)
    return torch.zeros(num_nodes, num_nodes).scatter_(1, neighbours, 1.0)


def random_regular_neighbours(num_nodes: int, degree: int, generator: torch.Generator) -> Tensor:
    """:func:`random_regular_graph` as neighbour lists, without an ``n x n`` matrix (same draws, same graph).

    Returns:
        ``(n, s)`` int64, row i = the s neighbours of node i in increasing order.

    Raises:
        ValueError: For an impossible (n, s), see :func:`validate_topology`.
        RuntimeError: If no graph was found in :data:`MAX_GRAPH_TRIES` attempts (not observed in practice).
    """
    validate_topology("el-oracle", num_nodes, degree)
    if degree == num_nodes - 1:
        everyone = torch.arange(num_nodes).expand(num_nodes, -1)
        return everyone[~torch.eye(num_nodes, dtype=torch.bool)].view(num_nodes, degree)
    for _ in range(MAX_GRAPH_TRIES):
        edges = _try_pairing(num_nodes, degree, generator)
        if edges is not None:
            index = torch.tensor(sorted(edges), dtype=torch.long)
            both = torch.cat([index, index.flip(1)])  # (a, b) and (b, a)
            order = (both[:, 0] * num_nodes + both[:, 1]).argsort()
            return both[order, 1].view(num_nodes, degree)
    raise RuntimeError(f"could not draw a {degree}-regular graph on {num_nodes} nodes in {MAX_GRAPH_TRIES} attempts")


def _try_pairing(n: int, d: int, generator: torch.Generator) -> set[tuple[int, int]] | None:
    edges: set[tuple[int, int]] = set()
    stubs = list(range(n)) * d
    while stubs:
        potential: dict[int, int] = defaultdict(int)
        order = torch.randperm(len(stubs), generator=generator).tolist()
        shuffled = [stubs[p] for p in order]
        pairs = iter(shuffled)
        for a, b in zip(pairs, pairs):
            if a > b:
                a, b = b, a
            if a != b and (a, b) not in edges:
                edges.add((a, b))
            else:
                potential[a] += 1
                potential[b] += 1
        if not _suitable(edges, potential):
            return None
        stubs = [node for node, count in potential.items() for _ in range(count)]
    return edges


def _suitable(edges: set[tuple[int, int]], potential: dict[int, int]) -> bool:
    """Whether an edge can still be added between two nodes with free stubs."""
    if not potential:
        return True
    nodes = list(potential)
    for x, a in enumerate(nodes):
        for b in nodes[:x]:
            if (min(a, b), max(a, b)) not in edges:
                return True
    return False


def el_oracle_receivers(num_nodes: int, peers: int, num_fragments: int, generator: torch.Generator) -> Tensor:
    """Draw EL-Oracle graphs as neighbour lists: a fresh random s-regular undirected graph per fragment
    (:func:`random_regular_neighbours`); every node sends to, and receives from, its s neighbours.

    Returns:
        ``(K, n, s)`` int64, ``receivers[k, i]`` = node i's neighbours in fragment k's graph.
    """
    return torch.stack([random_regular_neighbours(num_nodes, peers, generator) for _ in range(num_fragments)])


def el_oracle_adjacency(num_nodes: int, peers: int, num_fragments: int, generator: torch.Generator) -> Tensor:
    """Draw EL-Oracle graphs: a fresh random s-regular undirected graph per fragment.

    Epidemic Learning, EL-Oracle (de Vos et al., NeurIPS 2023): every node sends to and receives from its s
    neighbours, so the mixing matrices are doubly stochastic.

    Returns:
        ``(K, n, n)`` float32 symmetric 0/1 tensor; every row and column sums to s.
    """
    return receivers_to_adjacency(el_oracle_receivers(num_nodes, peers, num_fragments, generator))


def sample_receivers(
    topology: str, num_nodes: int, peers: int, num_fragments: int, generator: torch.Generator
) -> Tensor:
    """Draw one round's communication graphs, one per fragment, as receiver lists (no ``n x n`` tensor above
    :data:`DENSE_DRAW_LIMIT`).

    Args:
        topology: ``"el-local"`` or ``"el-oracle"``.
        num_nodes: n >= 2.
        peers: s in [1, n - 1].
        num_fragments: K >= 1.
        generator: Source of randomness (CPU ``torch.Generator``); advanced by this call.

    Returns:
        ``(K, n, s)`` int64, ``receivers[k, i]`` = the s distinct peers node i sends fragment k to.

    Raises:
        ValueError: See :func:`validate_topology`.
    """
    validate_topology(topology, num_nodes, peers)
    if topology == "el-local":
        return el_local_receivers(num_nodes, peers, num_fragments, generator)
    return el_oracle_receivers(num_nodes, peers, num_fragments, generator)


def sample_adjacency(
    topology: str, num_nodes: int, peers: int, num_fragments: int, generator: torch.Generator
) -> Tensor:
    """Draw one round's communication graphs, one per fragment (:func:`sample_receivers`, made dense).

    Args:
        topology: ``"el-local"`` or ``"el-oracle"``.
        num_nodes: n >= 2.
        peers: s in [1, n - 1].
        num_fragments: K >= 1.
        generator: Source of randomness (CPU ``torch.Generator``); advanced by this call.

    Returns:
        ``(K, n, n)`` float32 tensor, ``adjacency[k, j, i]`` = copies of fragment k node j receives from node i.

    Raises:
        ValueError: See :func:`validate_topology`.
    """
    return receivers_to_adjacency(sample_receivers(topology, num_nodes, peers, num_fragments, generator))


def mixing_matrices_from_adjacency(adjacency: Tensor) -> Tensor:
    """Turn received-copies counts into aggregation weights.

    Node j averages its own fragment with the m_jk copies it received, all with equal weight
    (EL, de Vos et al. 2023, Eq. 2):
    ``W_k = (I + A_k) / (1 + A_k 1)`` row-wise. A node that received nothing keeps its fragment (row = e_j).

    Args:
        adjacency: ``(K, n, n)`` non-negative counts, ``adjacency[k, j, i]`` copies j received from i.

    Returns:
        ``(K, n, n)`` row-stochastic matrices in the dtype of ``adjacency``.
    """
    n = adjacency.shape[-1]
    eye = torch.eye(n, dtype=adjacency.dtype, device=adjacency.device)
    weights = adjacency + eye
    return weights / weights.sum(dim=-1, keepdim=True)


def mixing_matrices(
    num_nodes: int,
    peers: int,
    num_fragments: int,
    generator: torch.Generator,
    topology: str = "el-local",
) -> Tensor:
    """The mixing matrices W_1..W_K of one gossip round.

    Args:
        num_nodes: n >= 2.
        peers: s in [1, n - 1].
        num_fragments: K >= 1. With K = 1 this is exactly Epidemic Learning's mixing matrix.
        generator: Source of randomness (CPU ``torch.Generator``); advanced by this call.
        topology: ``"el-local"`` (row-stochastic) or ``"el-oracle"`` (doubly stochastic).

    Returns:
        ``(K, n, n)`` float32 row-stochastic tensor; round update is ``X[:, P_k] <- W_k @ X[:, P_k]``.

    Raises:
        ValueError: See :func:`validate_topology`.
    """
    return mixing_matrices_from_adjacency(sample_adjacency(topology, num_nodes, peers, num_fragments, generator))
