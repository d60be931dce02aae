"""The Mosaic Learning gossip protocol as a stateful object: fragmentation + per-round graphs + mixing.

Pure tensor code (no Lightning); :class:`~lightning_mosaic.callbacks.MosaicGossip` is the Lightning glue around it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lightning_mosaic._validation import check_int, check_probability
from lightning_mosaic.gossip.fragmentation import Fragmentation, make_fragmentation
from lightning_mosaic.gossip.graphs import (
    GRAPH_TOPOLOGIES,
    WEIGHTS,
    Graph,
    check_topology,
    graph_receivers,
    make_graph,
)
from lightning_mosaic.gossip.mixing import (
    KERNELS,
    default_backend,
    default_kernel,
    mix_,
    mix_received_,
    weighted_mixing_matrices,
    workspace_size,
)
from lightning_mosaic.gossip.spectral import topology_spectral_gap
from lightning_mosaic.gossip.topology import (
    dense_draw,
    mixing_matrices_from_adjacency,
    receivers_to_adjacency,
    sample_receivers,
    validate_topology,
)
from lightning_mosaic.seeding import FRAGMENTATION_STREAM, TOPOLOGY_STREAM, derive_seed


def nonfinite_nodes(params: Tensor) -> Tensor:
    """``(n,)`` bool mask of the rows of an ``(n, d)`` parameter matrix holding a NaN or an infinity."""
    return ~torch.isfinite(params).all(dim=1)


class RoundGraphs(NamedTuple):
    """One round's communication, one graph per fragment, as receiver lists (memory ``O(K n s)``).

    Attributes:
        receivers: ``(K, n, s)`` int64, ``receivers[k, i]`` = the s peers node i sends fragment k to. Entries that
            carry no message (padding: a node with fewer neighbours than s) hold the sender's own index i and are
            marked not delivered.
        delivered: ``(K, n, s)`` bool, ``False`` where that message is lost (``drop_prob``), its sender or receiver
            is offline, or the entry is padding; ``None`` when every message arrives.
        weights: ``(K, n, s)`` float64, ``weights[k, i, r]`` = the weight ``receivers[k, i, r]`` gives to node i's
            fragment k (0 on padding): receiver j's fragment becomes ``(1 - sum of the weights of the messages it
            received) x_j + sum of w_m x_src(m)`` (D-PSGD; :func:`~lightning_mosaic.gossip.mixing.aggregation_weights`).
            ``None``: the EL rule, ``(x_j + sum received) / (1 + count received)``.
    """

    receivers: Tensor
    delivered: Tensor | None
    weights: Tensor | None = None

    def adjacency(self) -> Tensor:
        """``(K, n, n)`` float32 received-copies counts, ``adjacency[k, j, i]`` = copies j receives from i."""
        return receivers_to_adjacency(self.receivers, self.delivered)

    def mixing_matrices(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(K, n, n)`` row-stochastic mixing matrices in ``dtype`` (memory ``O(K n^2)``), the round update being
        ``X[:, P_k] <- W_k X[:, P_k]``: from :attr:`weights` when given
        (:func:`~lightning_mosaic.gossip.mixing.weighted_mixing_matrices`, built in float64), else the EL rule from
        the counts (:func:`~lightning_mosaic.gossip.mixing_matrices_from_adjacency` of :meth:`adjacency`).

        Raises:
            ValueError: If :attr:`weights` are invalid
                (see :func:`~lightning_mosaic.gossip.mixing.aggregation_weights`).
        """
        if self.weights is None:
            return mixing_matrices_from_adjacency(self.adjacency().to(dtype))
        return weighted_mixing_matrices(self.receivers, self.delivered, self.weights, dtype)


class FragmentGossip:
    """Mosaic Learning's communication step for n nodes (arXiv 2602.04352, Algorithm 1; K = 1 is EL).

    Holds the fixed fragmentation, the ``torch.Generator`` that draws one graph per fragment per round, and the
    round counter. :meth:`round_` mixes an ``(n, d)`` parameter matrix in place.

    Args:
        tensor_sizes: Element counts of the trainable tensors in ``named_parameters()`` order (d = their sum).
        num_nodes: n >= 2.
        fragments: K in [1, d] (``"layer"``: at most the number of tensors).
        peers: s in [1, n - 1]; on a fixed graph at most every node's degree, or ``"all"`` (every neighbour:
            D-PSGD with ``fragments=1``).
        topology: ``"el-local"`` or ``"el-oracle"`` (n * s even), or a fixed graph
            (:data:`~lightning_mosaic.gossip.GRAPH_TOPOLOGIES`: ``"ring"``, ``"torus"``, ``"regular"``,
            ``"exponential"``, ``"one-peer-exponential"``, ``"complete"``, ``"file"``), built once at construction
            (:func:`~lightning_mosaic.gossip.make_graph`; a random regular graph from its own stream of ``seed``).
        fragmentation: ``"random"``, ``"contiguous"`` or ``"layer"``.
        seed: Run seed. The fragmentation and the graph stream use independent seeds derived from it, so every node
            (and every process) that uses the same seed draws the same fragments and graphs.
        drop_prob: Probability in [0, 1] that a fragment message is lost in transit, independently per message
            (fault model; the sender still spends the bandwidth). Drops are drawn from the graph generator after
            the round's graphs, and only when ``drop_prob > 0``, so ``drop_prob = 0`` leaves the stream unchanged.
        kernel: How :meth:`round_` mixes: ``"dense"`` (``(K, n, n)`` matrices, :func:`~lightning_mosaic.gossip.mix_`),
            ``"index"`` (receiver lists, :func:`~lightning_mosaic.gossip.mix_received_`, no ``n x n`` tensor) or
            ``"auto"`` (:func:`~lightning_mosaic.gossip.default_kernel`, from measurements). Both draw the same
            graphs from the same stream and give the same result up to float rounding.
        degree: Degree of ``topology="regular"`` (default: ``peers``; required with ``peers="all"``).
        graph: Edge-list file of ``topology="file"`` (:func:`~lightning_mosaic.gossip.read_edge_list`).
        shape: ``(a, b)`` with a * b = n for ``topology="torus"`` (default: the most square factorization).
        directed: Whether the lines of ``graph`` are directed edges ``u -> v`` (default: undirected).
        weights: On a fixed graph whose every neighbour is used (``peers="all"``, or ``peers`` equal to every
            node's degree): ``"metropolis-hastings"`` (default, doubly stochastic on undirected graphs) or
            ``"uniform"`` (:meth:`~lightning_mosaic.gossip.Graph.weights`); a lost message's weight stays with its
            receiver. With peers sampled among the neighbours, and on EL and one-peer exponential topologies, a
            node averages its own fragment with the copies it received, equal weights (the EL rule); ``weights``
            must then be ``None`` or ``"uniform"``.
        allow_disconnected: Accept a fixed graph with several connected components, or a directed one with several
            groups of nodes that hear no other group (on purpose: such groups never mix).

    Raises:
        ValueError: For any argument outside the ranges above, naming it.
    """

    def __init__(
        self,
        tensor_sizes: Sequence[int],
        num_nodes: int,
        fragments: int = 1,
        peers: int = 1,
        topology: str = "el-local",
        fragmentation: str = "random",
        seed: int = 0,
        drop_prob: float = 0.0,
        kernel: str = "auto",
        *,
        degree: int | None = None,
        graph: str | os.PathLike | None = None,
        shape: tuple[int, int] | None = None,
        directed: bool = False,
        weights: str | None = None,
        allow_disconnected: bool = False,
    ) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.drop_prob = check_probability("drop_prob", drop_prob)
        check_topology(topology)
        self.graph: Graph | None = None
        """The fixed graph of a graph topology (``None`` for EL-Local and EL-Oracle)."""
        self._weights: Tensor | None = None
        if topology in GRAPH_TOPOLOGIES:
            if topology == "regular" and degree is None:
                if peers == "all":
                    raise ValueError(
                        "topology='regular' with peers='all' needs degree (the number of neighbours of every node, "
                        "--gossip.degree on the command line); it defaults to peers only when peers is a number"
                    )
                degree = peers  # the degree defaults to s
            self.graph = make_graph(
                topology,
                num_nodes,
                degree=degree,
                graph=graph,
                shape=None if shape is None else (int(shape[0]), int(shape[1])),
                directed=directed,
                allow_disconnected=allow_disconnected,
                seed=seed,
            )
            self._weights = self._static_weights(peers, weights)
        else:
            if peers == "all":
                raise ValueError(
                    f"peers='all' (every neighbour) needs a fixed graph topology, one of {GRAPH_TOPOLOGIES}; "
                    f"topology={topology!r} draws s random peers: give peers as an integer"
                )
            validate_topology(topology, num_nodes, peers)
            unused = {"degree": degree, "graph": graph, "shape": shape, "weights": weights}
            for name, value in unused.items():
                if value is not None:
                    raise ValueError(
                        f"{name}={value!r} applies to fixed graph topologies ({', '.join(GRAPH_TOPOLOGIES)}), "
                        f"not to topology={topology!r}"
                    )
        self.num_nodes = num_nodes
        self.peers = peers
        self.topology = topology
        self.seed = seed
        self.fragmentation: Fragmentation = make_fragmentation(
            tensor_sizes, fragments, fragmentation, seed=derive_seed(seed, FRAGMENTATION_STREAM)
        )
        self.generator = torch.Generator().manual_seed(derive_seed(seed, TOPOLOGY_STREAM))
        self.rounds = 0
        self.kernel = default_kernel(num_nodes, self.fragmentation.num_fragments) if kernel == "auto" else kernel
        """The kernel in use, ``"dense"`` or ``"index"`` (``"auto"`` resolved)."""
        self._workspace: Tensor | None = None
        self._weights_kind = weights or "metropolis-hastings"
        self._spectral_gap: float | None = None

    def _static_weights(self, peers: int | str, weights: str | None) -> Tensor | None:
        """Check ``peers`` against :attr:`graph` and return the ``(n, D)`` float64 weights of a graph used whole,
        ``None`` where the EL rule aggregates (peers sampled among the neighbours, one-peer exponential)."""
        graph = self.graph
        assert graph is not None
        if weights is not None and weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS} or None, got {weights!r}")
        degrees = graph.degrees
        if graph.name == "one-peer-exponential":
            if peers not in (1, "all"):
                raise ValueError(
                    f"topology='one-peer-exponential' sends each round to one peer: peers must be 1 or 'all', got "
                    f"{peers!r}"
                )
        elif peers != "all":
            check_int("peers (s)", peers, 1)
            low = int(degrees.argmin())
            if peers > int(degrees[low]):
                raise ValueError(
                    f"peers (s) = {peers} is above the degree of node {low} ({int(degrees[low])} neighbours) in the "
                    f"{graph.name} graph on {graph.num_nodes} nodes; use peers <= {int(degrees[low])}, or "
                    "peers='all' (every neighbour)"
                )
        if graph.name == "one-peer-exponential":
            whole = False
        else:
            whole = peers == "all" or bool((degrees == peers).all())
        if not whole:
            if weights == "metropolis-hastings":
                raise ValueError(
                    "weights='metropolis-hastings' applies when every neighbour is used (peers='all' or the "
                    f"degree); with peers (s) = {peers} sampled among the neighbours (or a one-peer exponential "
                    "graph) each node averages what it received with equal weights: pass weights=None"
                )
            return None
        return graph.weights(weights or "metropolis-hastings")

    @property
    def weights_name(self) -> str:
        """How a node weighs what it received: ``"metropolis-hastings"`` or ``"uniform"`` on a fixed graph used
        whole, ``"el"`` (its own fragment and the copies it received, equal weights) otherwise."""
        return "el" if self._weights is None else self._weights_kind

    @property
    def sampled(self) -> bool:
        """Whether each round draws its graphs: EL topologies, or peers sampled among a fixed graph's neighbours
        (one-peer exponential and a graph used whole draw nothing)."""
        if self.graph is None:
            return True
        return self._weights is None and self.graph.name != "one-peer-exponential"

    @property
    def messages_per_node(self) -> float:
        """Messages a node sends per fragment per round, on average over the nodes: s, the mean degree of a graph
        used whole, or 1 on the one-peer exponential graph."""
        if self.graph is None:
            return float(self.peers)
        if self.graph.name == "one-peer-exponential":
            return 1.0
        if self._weights is not None:
            return float(self.graph.degrees.double().mean())
        return float(self.peers)

    def graph_fingerprint(self) -> str | None:
        """SHA-256 (hex) of the fixed graph as this run uses it: its neighbour table, whether it is directed, and the
        weights of a graph used whole; ``None`` for EL topologies. Equal for the same edge list wherever the file
        lies, different once the file is edited (a checkpoint check, see
        :meth:`~lightning_mosaic.callbacks.MosaicGossip.on_load_checkpoint`)."""
        if self.graph is None:
            return None
        digest = hashlib.sha256()
        digest.update(f"{self.graph.name}:{self.graph.directed}:{self.weights_name}:".encode())
        digest.update(self.graph.neighbours.contiguous().numpy().tobytes())
        if self._weights is not None:
            digest.update(self._weights.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def spectral_gap(self) -> float:
        """1 - the second largest eigenvalue modulus of the (expected) mixing matrix of one fragment
        (:func:`~lightning_mosaic.gossip.topology_spectral_gap`); computed on the first call, then kept."""
        if self._spectral_gap is None:
            peers = None if self.peers == "all" else int(self.peers)
            kind = None if self._weights is None else self._weights_kind
            self._spectral_gap = float(topology_spectral_gap(self.topology, self.num_nodes, peers, self.graph, kind))
        return self._spectral_gap

    @property
    def num_fragments(self) -> int:
        """K."""
        return self.fragmentation.num_fragments

    @property
    def num_coordinates(self) -> int:
        """d."""
        return self.fragmentation.num_coordinates

    def next_graphs(self, offline: Tensor | None = None) -> RoundGraphs:
        """Draw the next round's graphs as receiver lists and advance the round counter.

        Order of draws from :attr:`generator`: the K graphs, then (only when ``drop_prob > 0``) one uniform per
        message. While :func:`~lightning_mosaic.gossip.topology.dense_draw` holds (small ``K n^2``), the drop
        uniforms are drawn as one ``(K, n, n)`` tensor, exactly as in the first releases, so seeded results there
        are unchanged; above it, one ``(K, n, s)`` tensor.

        Args:
            offline: Optional ``(n,)`` bool mask of nodes that neither send nor receive this round. The graphs are
                drawn as if all nodes were online, so the random stream does not depend on the mask.
        """
        n, k = self.num_nodes, self.num_fragments
        weights = None
        if self.graph is None:
            receivers = sample_receivers(self.topology, n, self.peers, k, self.generator)
            delivered = None
        else:
            peers = None if self._weights is not None or self.peers == "all" else int(self.peers)
            receivers, delivered = graph_receivers(self.graph, peers, k, self.generator, round=self.rounds)
            if self._weights is not None:
                weights = self._weights.unsqueeze(0).expand(k, -1, -1)
        if self.drop_prob > 0:
            if dense_draw(n, k):
                uniforms = torch.rand(k, n, n, generator=self.generator)  # [k, j, i]: message i -> j
                kept = uniforms.transpose(1, 2).gather(2, receivers) >= self.drop_prob
            else:
                kept = torch.rand(receivers.shape, generator=self.generator) >= self.drop_prob
            delivered = kept if delivered is None else delivered & kept
        if offline is not None:
            online = ~offline.to(device="cpu", dtype=torch.bool)
            reachable = online[None, :, None] & online[receivers]
            delivered = reachable if delivered is None else delivered & reachable
        self.rounds += 1
        return RoundGraphs(receivers, delivered, weights)

    def next_matrices(self, dtype: torch.dtype = torch.float32, offline: Tensor | None = None) -> Tensor:
        """Draw the next round's ``(K, n, n)`` mixing matrices in ``dtype`` and advance the round counter.

        The same draws as :meth:`next_graphs`, made dense (:meth:`RoundGraphs.mixing_matrices`: from the round's
        weights when it has them, else the EL rule): memory ``O(K n^2)``.

        Args:
            dtype: dtype of the matrices.
            offline: Optional ``(n,)`` bool mask of nodes that neither send nor receive this round (their rows of
                every matrix are the identity and no other row gives them weight). The graphs are drawn as if all
                nodes were online, so the random stream does not depend on the mask.
        """
        return self.next_graphs(offline).mixing_matrices(dtype)

    def round_(self, params: Tensor, offline: Tensor | None = None) -> Tensor | None:
        """Run one gossip round in place on ``params`` of shape ``(n, d)`` with :attr:`kernel`.

        Args:
            params: ``(n, d)`` parameter matrix, mixed in place.
            offline: Optional ``(n,)`` bool mask of nodes isolated this round (see :meth:`next_matrices`); their
                rows are left exactly as they were, and nothing of theirs (not even NaN) reaches another row.

        Returns:
            With the dense kernel, the ``(K, n, n)`` matrices used (in ``params.dtype``, so that EL-Oracle's
            matrices are doubly stochastic to that precision); with the index kernel, ``None`` (no matrix exists;
            use :meth:`next_graphs` and :meth:`RoundGraphs.adjacency` to inspect graphs).
        """
        if params.device != self.fragmentation.assignment.device:
            self.fragmentation = self.fragmentation.to(params.device)
        if self.kernel == "index":
            graphs = self.next_graphs(offline)
            weighted = graphs.weights is not None
            mix_received_(
                params,
                graphs.receivers,
                graphs.delivered,
                self.fragmentation,
                self._scratch(params, weighted),
                weights=graphs.weights,
            )
            return None
        matrices = self.next_matrices(params.dtype, offline).to(params.device)
        if offline is None or not bool(offline.any()):
            mix_(params, matrices, self.fragmentation)
            return matrices
        # Offline rows get zero weight elsewhere, but 0 * NaN is NaN in a matrix product: take them out of the
        # product entirely (their own rows of W are the identity) and put them back unchanged.
        offline = offline.to(device=params.device, dtype=torch.bool)
        kept = params[offline].clone()
        params[offline] = 0
        mix_(params, matrices, self.fragmentation)
        params[offline] = kept
        return matrices

    def _scratch(self, params: Tensor, weighted: bool = False) -> Tensor:
        """The index kernel's workspace, as large as the backend that runs needs (none for the fused "tiles" layout;
        more for a ``weighted`` torch round), allocated once per dtype and device and reused every round."""
        backend = default_backend(params)
        needed = workspace_size(self.num_nodes, self.fragmentation, backend, params.element_size(), weighted)
        ws = self._workspace
        if ws is None or ws.dtype != params.dtype or ws.device != params.device or ws.numel() < needed:
            ws = self._workspace = params.new_empty(needed)
        return ws

    def state_dict(self) -> dict[str, Any]:
        """Random state and round counter, for exact resume."""
        return {"rounds": self.rounds, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.rounds = int(state["rounds"])
        self.generator.set_state(state["generator"])
