"""Static base graphs: the fixed networks D-PSGD runs on, and that Mosaic Learning samples its peers from.

Pure tensor code (no Lightning). A :class:`Graph` stores, for every node, the nodes it sends to, as a padded
``(n, D)`` neighbour table (the same sender-major layout as a round's ``(K, n, s)`` receiver lists). The per-round
draws over a base graph are :func:`graph_receivers`; the spectral gap is in
:mod:`~lightning_mosaic.gossip.spectral`.

Weights (:meth:`Graph.weights`, Xiao and Boyd, "Fast linear iterations for distributed averaging", 2004): node j
gives ``w_ji`` to the value it receives from an in-neighbour i and keeps ``1 - sum_i w_ji`` for its own.

- ``"metropolis-hastings"``: ``w_ji = 1 / (1 + max(out_i, in_j))`` (out-degree of the sender, in-degree of the
  receiver; on an undirected graph both are the degree). Symmetric, hence doubly stochastic, on an undirected graph;
  on a directed graph row-stochastic, and doubly stochastic when every node's in-degree equals its out-degree and all
  are equal (the exponential graph: ``1 / (tau + 1)`` everywhere).
- ``"uniform"``: ``w_ji = 1 / (1 + in_j)``: every received value and one's own weighted equally (the EL rule with
  every neighbour heard). Row-stochastic; doubly stochastic on regular graphs.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import scipy.sparse
import torch
from scipy.sparse import csgraph
from torch import Tensor

from lightning_mosaic._validation import check_int
from lightning_mosaic.gossip.topology import DENSE_DRAW_LIMIT, TOPOLOGIES, random_regular_neighbours
from lightning_mosaic.seeding import BASE_GRAPH_STREAM, derive_seed

WeightsName = Literal["metropolis-hastings", "uniform"]
WEIGHTS: tuple[str, ...] = get_args(WeightsName)

GraphTopologyName = Literal["ring", "torus", "regular", "exponential", "one-peer-exponential", "complete", "file"]
GRAPH_TOPOLOGIES: tuple[str, ...] = get_args(GraphTopologyName)

ALL_TOPOLOGIES: tuple[str, ...] = TOPOLOGIES + GRAPH_TOPOLOGIES
"""Every ``topology`` a run accepts: the EL ones, drawn each round
(:data:`~lightning_mosaic.gossip.topology.TOPOLOGIES`), then the fixed graphs."""


def check_topology(topology: str) -> str:
    """Return ``topology`` if it is one of :data:`ALL_TOPOLOGIES`.

    Raises:
        ValueError: Naming the value, every allowed one and the closest (``did you mean 'ring'?``).
    """
    if topology in ALL_TOPOLOGIES:
        return topology
    close = difflib.get_close_matches(str(topology), ALL_TOPOLOGIES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"topology must be one of {ALL_TOPOLOGIES}, got {topology!r}{hint}")


DENSE_NODES_LIMIT = math.isqrt(DENSE_DRAW_LIMIT)
"""Largest n (2048) for which an ``(n, n)`` matrix is built: :meth:`Graph.mixing_matrix`, and the dense eigenvalue
solver of :func:`~lightning_mosaic.gossip.spectral.spectral_gap` (one ``n x n`` matrix is the size of one dense
round draw at K = 1, :data:`~lightning_mosaic.gossip.topology.DENSE_DRAW_LIMIT`)."""


@dataclass(frozen=True, eq=False)
class Graph:
    """A fixed communication graph on n nodes.

    Attributes:
        name: The topology it was built as: ``"ring"``, ``"torus"``, ``"regular"``, ``"exponential"``,
            ``"one-peer-exponential"`` (the exponential graph, of which one neighbour is used per round),
            ``"complete"`` or ``"file"``.
        neighbours: ``(n, D)`` int64, row i = the nodes i sends to (its out-neighbours) in increasing order in the
            first ``degrees[i]`` slots, the rest padded with ``i``.
        degrees: ``(n,)`` int64 out-degrees; ``D = degrees.max()``.
        directed: ``False``: j is a neighbour of i exactly when i is one of j (messages flow both ways).
    """

    name: str
    neighbours: Tensor
    degrees: Tensor
    directed: bool

    @property
    def num_nodes(self) -> int:
        """n."""
        return int(self.neighbours.shape[0])

    @property
    def valid(self) -> Tensor:
        """``(n, D)`` bool, ``True`` on the slots of :attr:`neighbours` that hold a neighbour (not padding)."""
        return torch.arange(self.neighbours.shape[1]) < self.degrees[:, None]

    @property
    def in_degrees(self) -> Tensor:
        """``(n,)`` int64, the number of nodes that send to each node (equal to :attr:`degrees` when undirected)."""
        return torch.bincount(self.neighbours[self.valid], minlength=self.num_nodes)

    def edges(self) -> tuple[Tensor, Tensor]:
        """Every message link as ``(senders, receivers)``, two ``(E,)`` int64 tensors in sender-major order (an
        undirected edge appears once in each direction)."""
        senders = torch.arange(self.num_nodes)[:, None].expand_as(self.neighbours)
        valid = self.valid
        return senders[valid], self.neighbours[valid]

    def weights(self, kind: str = "metropolis-hastings") -> Tensor:
        """The weight each receiver gives to each neighbour's value (module docstring).

        Args:
            kind: One of :data:`WEIGHTS`.

        Returns:
            ``(n, D)`` float64 indexed like :attr:`neighbours`: ``weights[i, r]`` is what node ``neighbours[i, r]``
            gives to node i's value; 0 on padding.

        Raises:
            ValueError: If ``kind`` is not one of :data:`WEIGHTS`.
        """
        return self.link_weights(self.neighbours[None], kind)[0]

    def link_weights(self, receivers: Tensor, kind: str = "metropolis-hastings") -> Tensor:
        """The weights of this graph's links for any receiver lists over it, from the degrees alone (no lookup).

        Args:
            receivers: ``(..., n, s)`` int64, ``receivers[..., i, r]`` a neighbour of node i in this graph, or i
                itself for a slot that carries no message (e.g. a round of
                :func:`graph_receivers`).
            kind: One of :data:`WEIGHTS`.

        Returns:
            Float64 tensor shaped like ``receivers``: the weight ``w_ji`` node ``j = receivers[..., i, r]`` gives to
            node i's value (module docstring); 0 where ``j == i``.

        Raises:
            ValueError: If ``kind`` is not one of :data:`WEIGHTS`.
        """
        if kind not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got {kind!r}")
        heard = self.in_degrees.to(torch.float64)[receivers]  # in_j of each slot's receiver j
        if kind == "metropolis-hastings":
            heard = torch.maximum(heard, self.degrees.to(torch.float64)[:, None])
        senders = torch.arange(self.num_nodes)[:, None]
        return torch.where(receivers != senders, 1.0 / (1.0 + heard), 0.0)

    def sparse_mixing_matrix(self, kind: str = "metropolis-hastings") -> scipy.sparse.csr_array:
        """The mixing matrix W of one round in which every node sends to all its neighbours, as a sparse matrix.

        Args:
            kind: One of :data:`WEIGHTS`.

        Returns:
            ``(n, n)`` float64 CSR array, row-stochastic: ``W[j, i] = w_ji`` for every in-neighbour i of j and
            ``W[j, j] = 1 - sum_i w_ji``; the round update is ``X <- W X``.

        Raises:
            ValueError: If ``kind`` is not one of :data:`WEIGHTS`.
        """
        weights = self.weights(kind)[self.valid].numpy()
        senders, receivers = (t.numpy() for t in self.edges())
        n = self.num_nodes
        self_weights = 1.0 - np.bincount(receivers, weights=weights, minlength=n)
        nodes = np.arange(n)
        rows, cols = np.concatenate([receivers, nodes]), np.concatenate([senders, nodes])
        return scipy.sparse.csr_array((np.concatenate([weights, self_weights]), (rows, cols)), shape=(n, n))

    def mixing_matrix(self, kind: str = "metropolis-hastings") -> Tensor:
        """:meth:`sparse_mixing_matrix` as a dense tensor (small n only).

        Returns:
            ``(n, n)`` float64 tensor, ``W[j, i]`` = the weight node j gives to node i's value.

        Raises:
            ValueError: If ``kind`` is not one of :data:`WEIGHTS`, or n > :data:`DENSE_NODES_LIMIT` (use
                :meth:`sparse_mixing_matrix`).
        """
        if self.num_nodes > DENSE_NODES_LIMIT:
            raise ValueError(
                f"mixing_matrix builds a dense (n, n) matrix, refused for n = {self.num_nodes} > "
                f"{DENSE_NODES_LIMIT} nodes; use sparse_mixing_matrix()"
            )
        return torch.from_numpy(self.sparse_mixing_matrix(kind).toarray())

    def components(self) -> tuple[int, Tensor]:
        """Weakly connected components (``scipy.sparse.csgraph.connected_components``).

        Returns:
            ``(count, labels)``: the number of components and the ``(n,)`` int64 component of every node.
        """
        senders, receivers = (t.numpy() for t in self.edges())
        n = self.num_nodes
        adjacency = scipy.sparse.csr_array((np.ones(len(senders)), (senders, receivers)), shape=(n, n))
        count, labels = csgraph.connected_components(adjacency, directed=True, connection="weak")
        return int(count), torch.from_numpy(labels.astype(np.int64))

    def num_components(self) -> int:
        """The number of weakly connected components (1: every node's values reach every other node's, ignoring
        the direction of the links)."""
        return self.components()[0]

    def source_components(self) -> list[Tensor]:
        """The groups of nodes that receive from no other group: the source components of the condensation (the
        graph of strongly connected components, ``scipy.sparse.csgraph.connected_components`` with
        ``connection="strong"``, with a link from one component to another where a node of the first sends to a
        node of the second).

        Averaging with row-stochastic weights reaches consensus on a (weakly) connected graph only if there is
        exactly one: every node then eventually hears from it, while two source groups never hear from each other.
        An undirected graph has one per connected component.

        Returns:
            One ``(size,)`` int64 tensor of node ids (increasing) per source component, ordered by their smallest
            node.
        """
        senders, receivers = (t.numpy() for t in self.edges())
        n = self.num_nodes
        adjacency = scipy.sparse.csr_array((np.ones(len(senders)), (senders, receivers)), shape=(n, n))
        count, labels = csgraph.connected_components(adjacency, directed=True, connection="strong")
        crossing = labels[senders] != labels[receivers]
        hears_another = np.zeros(count, dtype=bool)
        hears_another[labels[receivers[crossing]]] = True
        is_source = ~hears_another[labels]
        order = np.argsort(labels[is_source], kind="stable")  # nodes grouped by component, increasing within
        nodes = np.flatnonzero(is_source)[order]
        groups = np.split(nodes, np.flatnonzero(np.diff(labels[nodes])) + 1)
        groups.sort(key=lambda group: int(group[0]))
        return [torch.from_numpy(group.astype(np.int64)) for group in groups]


def from_edges(name: str, num_nodes: int, senders: Tensor, receivers: Tensor, directed: bool) -> Graph:
    """A :class:`Graph` from its links (no self-loops, no duplicates: the callers guarantee it).

    Args:
        name: The graph's :attr:`Graph.name`.
        num_nodes: n.
        senders: ``(E,)`` int64 node ids in [0, n).
        receivers: ``(E,)`` int64 node ids in [0, n); link e goes from ``senders[e]`` to ``receivers[e]``.
        directed: ``False``: each link is an undirected edge, used in both directions (give it once).

    Returns:
        The graph with every node's neighbours in increasing order.
    """
    if not directed:
        senders, receivers = torch.cat([senders, receivers]), torch.cat([receivers, senders])
    order = torch.argsort(senders * num_nodes + receivers)
    senders, receivers = senders[order], receivers[order]
    degrees = torch.bincount(senders, minlength=num_nodes)
    width = int(degrees.max()) if len(senders) else 0
    starts = torch.cumsum(degrees, 0) - degrees
    slots = torch.arange(len(senders)) - starts[senders]
    neighbours = torch.arange(num_nodes)[:, None].repeat(1, width)
    neighbours[senders, slots] = receivers
    return Graph(name, neighbours, degrees, directed)


def _from_offsets(name: str, num_nodes: int, offsets: Tensor, directed: bool) -> Graph:
    """The circulant graph i -> i + o mod n for each offset o (distinct, nonzero mod n; undirected: no offset
    together with its opposite)."""
    nodes = torch.arange(num_nodes)
    receivers = (nodes[:, None] + offsets[None, :]) % num_nodes
    senders = nodes[:, None].expand_as(receivers)
    return from_edges(name, num_nodes, senders.reshape(-1), receivers.reshape(-1), directed)


def ring(num_nodes: int) -> Graph:
    """The cycle 0 - 1 - ... - (n - 1) - 0: every node linked to i - 1 and i + 1 (mod n), undirected.

    Raises:
        ValueError: If n < 3 (a ring needs two distinct neighbours per node).
    """
    n = check_int("num_nodes (n)", num_nodes, 3, hint=" for topology='ring' (two distinct neighbours per node)")
    return _from_offsets("ring", n, torch.tensor([1]), directed=False)


def torus_shape(num_nodes: int) -> tuple[int, int]:
    """The most square factorization ``n = a * b`` with ``3 <= a <= b``.

    Raises:
        ValueError: If no such factorization exists (n prime, or n without two factors >= 3), naming n.
    """
    n = check_int("num_nodes (n)", num_nodes, 9, hint=" for topology='torus' (a * b nodes with sides a, b >= 3)")
    for a in range(math.isqrt(n), 2, -1):
        if n % a == 0 and n // a >= 3:
            return a, n // a
    why = "n is prime" if all(n % f for f in range(2, math.isqrt(n) + 1)) else "it has no factors a, b >= 3"
    raise ValueError(
        f"topology='torus' needs n = a * b with sides a, b >= 3, but n = {n} cannot be written so ({why}); "
        f"choose another number of nodes or another topology"
    )


def torus(num_nodes: int, shape: tuple[int, int] | None = None) -> Graph:
    """The 2-D torus: an ``a x b`` grid with wrap-around, node ``r * b + c`` at row r, column c, linked to its four
    neighbours ``(r +- 1 mod a, c)`` and ``(r, c +- 1 mod b)``; undirected, 4-regular.

    Args:
        num_nodes: n = a * b.
        shape: ``(a, b)``, both >= 3; ``None``: :func:`torus_shape` (the most square one).

    Raises:
        ValueError: If a side is < 3 or not an integer, if ``a * b != n`` (naming the shape and n), or (no shape)
            if n has no such factorization.
    """
    if shape is None:
        a, b = torus_shape(num_nodes)
    else:
        if not isinstance(shape, (tuple, list)) or len(shape) != 2:
            raise ValueError(f"shape must be a pair (a, b) of torus sides, got {shape!r}")
        a = check_int("shape[0] (torus side a)", shape[0], 3, hint=" (a torus side needs 3 nodes)")
        b = check_int("shape[1] (torus side b)", shape[1], 3, hint=" (a torus side needs 3 nodes)")
        n = check_int("num_nodes (n)", num_nodes, 9, hint=" for topology='torus'")
        if a * b != n:
            raise ValueError(f"shape ({a}, {b}) gives a * b = {a * b} nodes, not num_nodes (n) = {n}")
    grid = torch.arange(a * b).view(a, b)
    senders = torch.cat([grid.reshape(-1), grid.reshape(-1)])
    receivers = torch.cat([grid.roll(-1, 0).reshape(-1), grid.roll(-1, 1).reshape(-1)])  # down, right
    return from_edges("torus", a * b, senders, receivers, directed=False)


def random_regular(num_nodes: int, degree: int, generator: torch.Generator) -> Graph:
    """A random ``degree``-regular simple undirected graph (the Steger-Wormald pairing of
    :func:`~lightning_mosaic.gossip.topology.random_regular_neighbours`, as networkx and EL-Oracle draw it).

    Args:
        num_nodes: n >= 2.
        degree: in [1, n - 1] with n * degree even.
        generator: Source of the draw (CPU ``torch.Generator``); advanced by this call.

    Raises:
        ValueError: If ``degree`` is outside [1, n - 1] or n * degree is odd.
    """
    n = check_int("num_nodes (n)", num_nodes, 2, hint=" for topology='regular'")
    d = check_int("degree", degree, 1, n - 1, hint=f" for topology='regular' on n = {n} nodes")
    if (n * d) % 2:
        raise ValueError(
            f"degree = {d} on n = {n} nodes: a {d}-regular graph exists only when n * degree is even; "
            f"use an even degree or an even n"
        )
    neighbours = random_regular_neighbours(n, d, generator)
    return Graph("regular", neighbours, torch.full((n,), d, dtype=torch.long), directed=False)


def exponential_offsets(num_nodes: int) -> Tensor:
    """``(tau,)`` int64 offsets ``2^0, 2^1, ..., 2^(tau - 1)``, tau = ceil(log2 n): all distinct and < n."""
    tau = max(1, math.ceil(math.log2(num_nodes)))
    return 2 ** torch.arange(tau)


def exponential(num_nodes: int) -> Graph:
    """The (static) exponential graph: node i sends to ``(i + 2^k) mod n`` for k = 0, ..., tau - 1,
    tau = ceil(log2 n) (Ying et al., "Exponential graph is provably efficient for decentralized deep training",
    NeurIPS 2021). Directed, tau out- and in-neighbours per node.

    Raises:
        ValueError: If n < 2.
    """
    n = check_int("num_nodes (n)", num_nodes, 2, hint=" for topology='exponential'")
    return _from_offsets("exponential", n, exponential_offsets(n), directed=True)


def complete(num_nodes: int) -> Graph:
    """Every node linked to every other node (undirected).

    Raises:
        ValueError: If n < 2, or n > :data:`DENSE_NODES_LIMIT` (its ``(n, n - 1)`` neighbour table is a dense
            ``n x n`` array).
    """
    n = check_int("num_nodes (n)", num_nodes, 2, hint=" for topology='complete'")
    if n > DENSE_NODES_LIMIT:
        raise ValueError(
            f"topology='complete' on num_nodes (n) = {n} nodes needs an (n, n - 1) neighbour table "
            f"({n * (n - 1) * 8 / 2**30:.1f} GiB), allowed up to n = {DENSE_NODES_LIMIT}; with sampled peers use "
            "topology='el-local' (the same draws over all other nodes, without an n x n table)"
        )
    everyone = torch.arange(n).expand(n, -1)
    neighbours = everyone[~torch.eye(n, dtype=torch.bool)].view(n, n - 1)
    return Graph("complete", neighbours, torch.full((n,), n - 1, dtype=torch.long), directed=False)


_NODE_ID = re.compile(r"[+-]?\d+")


def read_edge_list(path: str | Path, num_nodes: int, directed: bool = False) -> Graph:
    """Read a graph from an edge-list file: one ``u v`` pair of node ids per line (whitespace-separated), ``#``
    starting a comment (a whole line or the end of one), blank lines allowed.

    Args:
        path: The file.
        num_nodes: n; node ids are in [0, n).
        directed: ``False`` (default): each line is an undirected edge (give it once: ``u v`` and then ``v u`` is a
            duplicate); ``True``: a link from u to v (``v u`` is another link).

    Returns:
        The graph, named ``"file"``.

    Raises:
        ValueError: If the file cannot be read, holds no edge, or a line is malformed (not two integers), a
            self-loop, a node id outside [0, n) or a duplicate edge: naming ``path:line`` and the line's text.
    """
    n = check_int("num_nodes (n)", num_nodes, 2, hint=" for topology='file'")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"graph={str(path)!r}: cannot read the edge-list file ({error})") from None
    seen: dict[tuple[int, int], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        where = f"{path}:{number}: {line.strip()!r}"
        fields = content.split()
        if len(fields) != 2 or not all(_NODE_ID.fullmatch(f) for f in fields):
            raise ValueError(f"{where}: malformed line, expected two integer node ids 'u v'")
        u, v = int(fields[0]), int(fields[1])
        for node in (u, v):
            if not 0 <= node < n:
                raise ValueError(f"{where}: node id {node} is out of range, node ids are in [0, {n - 1}] for n = {n}")
        if u == v:
            raise ValueError(f"{where}: self-loop (node {u} linked to itself)")
        key = (u, v) if directed else (min(u, v), max(u, v))
        if key in seen:
            what = "link" if directed else "edge"
            raise ValueError(f"{where}: duplicate {what} {u}-{v}, already given on line {seen[key]}")
        seen[key] = number
    if not seen:
        raise ValueError(f"{path}: the edge-list file holds no edge (only comments or blank lines)")
    links = torch.tensor(list(seen), dtype=torch.long)
    return from_edges("file", n, links[:, 0], links[:, 1], directed)


def make_graph(
    topology: str,
    num_nodes: int,
    *,
    degree: int | None = None,
    graph: str | Path | None = None,
    shape: tuple[int, int] | None = None,
    directed: bool = False,
    allow_disconnected: bool = False,
    seed: int = 0,
) -> Graph:
    """Build and check the base graph of a run: the one entry point.

    Args:
        topology: One of :data:`GRAPH_TOPOLOGIES`.
        num_nodes: n.
        degree: ``topology="regular"`` only (required there): the degree.
        graph: ``topology="file"`` only (required there): the edge-list file (:func:`read_edge_list`).
        shape: ``topology="torus"`` only: the sides ``(a, b)``; ``None``: the most square one.
        directed: ``topology="file"`` only: read each line as a directed link.
        allow_disconnected: Accept a graph with several components, and a directed graph with several groups of
            nodes that receive from no other group (:meth:`Graph.source_components`), for experiments on purpose.
        seed: Run seed; the regular graph is drawn from a generator seeded with
            ``derive_seed(seed, BASE_GRAPH_STREAM)``, so the same seed gives the same graph.

    Returns:
        The graph; for ``"one-peer-exponential"`` the exponential graph named ``"one-peer-exponential"`` (its
        per-round draw uses one of its neighbours, :func:`graph_receivers`).

    Raises:
        ValueError: Naming the parameter (or ``file:line``) and the value, if the topology is unknown, n is too
            small for it, a parameter is given for another topology or missing, the torus shape does not give n,
            the degree is impossible, the file is bad (:func:`read_edge_list`), or, unless ``allow_disconnected``,
            the graph is disconnected (with the number of components and the size of the largest) or is directed
            with more than one source component (:meth:`Graph.source_components`: their number and a few nodes of
            each).
    """
    if topology not in GRAPH_TOPOLOGIES:
        raise ValueError(f"topology must be one of {GRAPH_TOPOLOGIES}, got {topology!r}")
    for name, value, owner in (("degree", degree, "regular"), ("graph", graph, "file"), ("shape", shape, "torus")):
        if value is not None and topology != owner:
            raise ValueError(f"{name} applies to topology={owner!r} only, got {name}={value!r} with {topology!r}")
    if directed and topology != "file":
        raise ValueError(f"directed=True applies to topology='file' only, got it with topology={topology!r}")
    if topology == "regular" and degree is None:
        raise ValueError("topology='regular' needs degree (the number of neighbours of every node), got None")
    if topology == "file" and graph is None:
        raise ValueError("topology='file' needs graph (the path of an edge-list file), got None")
    check_int("seed", seed, 0)
    if topology == "ring":
        built = ring(num_nodes)
    elif topology == "torus":
        built = torus(num_nodes, shape)
    elif topology == "regular":
        generator = torch.Generator().manual_seed(derive_seed(seed, BASE_GRAPH_STREAM))
        built = random_regular(num_nodes, degree, generator)
    elif topology in ("exponential", "one-peer-exponential"):
        built = replace(exponential(num_nodes), name=topology)
    elif topology == "complete":
        built = complete(num_nodes)
    else:
        built = read_edge_list(graph, num_nodes, directed)
    if not allow_disconnected:
        what = f"graph={str(graph)!r}" if topology == "file" else f"topology={topology!r}"
        count, labels = built.components()
        if count > 1:
            largest = int(torch.bincount(labels).max())
            hint = " (another seed draws another graph)" if topology == "regular" else ""
            raise ValueError(
                f"{what} on n = {built.num_nodes} nodes is disconnected: {count} components, the largest has "
                f"{largest} nodes{hint}; pass allow_disconnected=True to run on it on purpose"
            )
        if built.directed:
            sources = built.source_components()
            if len(sources) > 1:
                raise ValueError(
                    f"{what} on n = {built.num_nodes} nodes is directed and {len(sources)} groups of nodes receive "
                    f"from no other group ({_describe_groups(sources)}), so these groups never hear from each other "
                    "and never agree; consensus needs exactly one such group, which every node then hears from "
                    "(add links between them); pass allow_disconnected=True (it accepts this too) to run on it on "
                    "purpose"
                )
    return built


def _describe_groups(groups: list[Tensor], shown_groups: int = 3, shown_nodes: int = 5) -> str:
    """``"nodes [0] and [2]"``, ``"nodes [0, 1, 2, 3, 4, ...] (7 nodes), [9] and 3 more groups"``: a few nodes of
    a few groups."""
    parts = []
    for group in groups[:shown_groups]:
        listed = ", ".join(str(node) for node in group[:shown_nodes].tolist())
        parts.append(f"[{listed}, ...] ({len(group)} nodes)" if len(group) > shown_nodes else f"[{listed}]")
    if len(groups) > shown_groups:
        parts.append(f"{len(groups) - shown_groups} more groups")
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"nodes {listed}"


def check_graph_peers(graph: Graph, peers: int | None) -> int | None:
    """Check ``peers`` against a base graph: ``None`` (every neighbour) or an int in [1, the smallest degree]
    (exactly 1 or ``None`` for ``"one-peer-exponential"``).

    Returns:
        ``peers`` as an int, or ``None``.

    Raises:
        ValueError: If ``peers`` is not a positive int, or it is above some node's degree (naming the first such
            node, its degree and ``peers``).
    """
    if peers is None:
        return None
    s = check_int("peers (s)", peers, 1, hint=" or None (every neighbour)")
    if graph.name == "one-peer-exponential":
        if s != 1:
            raise ValueError(
                f"topology='one-peer-exponential' sends to one peer per round: peers (s) must be 1 or None "
                f"(every neighbour), got {s}"
            )
        return s
    short = graph.degrees < s
    if bool(short.any()):
        node = int(short.nonzero()[0, 0])
        raise ValueError(
            f"peers (s) = {s} is above the degree of node {node} ({int(graph.degrees[node])}) in the "
            f"{graph.name!r} graph: a node cannot send to more distinct neighbours than it has; peers must be at "
            f"most the smallest degree, {int(graph.degrees.min())}, or None (every neighbour)"
        )
    return s


def graph_receivers(
    graph: Graph, peers: int | None, num_fragments: int, generator: torch.Generator, round: int = 0
) -> tuple[Tensor, Tensor | None]:
    """One round's receiver lists over a fixed base graph: every node sends only to its neighbours there.

    - ``peers=None``: every node sends every fragment to all its neighbours (static; D-PSGD when K = 1). Nothing
      is drawn from ``generator``.
    - ``peers = s``: each fragment goes, this round, to s distinct neighbours drawn uniformly among the node's
      neighbours, independently per node and per fragment (EL-Local restricted to the graph): the s smallest of one
      uniform score per neighbour. When every node has exactly s neighbours this is ``peers=None`` (no draw).
      Draws one ``torch.rand(K, n, D)`` while ``K n D <= DENSE_DRAW_LIMIT``, else one ``(n, D)`` per fragment
      (memory ``O(n D)``): the same numbers in the same order either way (the CPU generator fills a tensor in
      order; ``tests/test_gossip_graphs.py`` checks it), so the size does not change the draws.
    - ``graph.name == "one-peer-exponential"``: in round t (0-based) node i sends to ``(i + 2^(t mod tau)) mod n``,
      tau = ceil(log2 n), every fragment alike (Ying et al. 2021); nothing is drawn.

    Args:
        graph: The base graph (:func:`~lightning_mosaic.gossip.graphs.make_graph`).
        peers: s, or ``None`` for every neighbour (see :func:`check_graph_peers`).
        num_fragments: K >= 1.
        generator: Source of randomness (CPU ``torch.Generator``); advanced only when peers are sampled.
        round: The round's index t >= 0 (used by ``"one-peer-exponential"`` only).

    Returns:
        ``(receivers, delivered)``: ``(K, n, s)`` int64 receivers (s = D, the largest degree, with ``peers=None``;
        1 for the one-peer exponential graph), and a ``(K, n, s)`` bool mask that is ``False`` on the padding slots
        of nodes with fewer than D neighbours (those hold the sender's own index), or ``None`` when there is none.

    Raises:
        ValueError: See :func:`check_graph_peers`; if ``num_fragments`` < 1 or ``round`` < 0.
    """
    k = check_int("num_fragments (K)", num_fragments, 1)
    t = check_int("round", round, 0)
    s = check_graph_peers(graph, peers)
    n = graph.num_nodes
    if graph.name == "one-peer-exponential":
        offset = 2 ** (t % max(1, math.ceil(math.log2(n))))
        receivers = (torch.arange(n) + offset) % n
        return receivers.view(1, n, 1).expand(k, n, 1).clone(), None
    table, degrees = graph.neighbours, graph.degrees
    width = table.shape[1]
    if s is None or bool((degrees == s).all()):
        delivered = None if bool((degrees == width).all()) else graph.valid.expand(k, n, width).clone()
        return table.expand(k, n, width).clone(), delivered
    padding = ~graph.valid
    if k * n * width <= DENSE_DRAW_LIMIT:
        scores = torch.rand(k, n, width, generator=generator).masked_fill_(padding, math.inf)
        slots = scores.topk(s, dim=2, largest=False).indices
    else:
        slots = torch.stack(
            [
                torch.rand(n, width, generator=generator).masked_fill_(padding, math.inf).topk(s, 1, largest=False)[1]
                for _ in range(k)
            ]
        )
    return table.expand(k, n, width).gather(2, slots), None
