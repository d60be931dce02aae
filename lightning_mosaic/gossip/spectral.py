r"""How fast a topology mixes: the spectral gap of its (expected) mixing matrix.

Pure numpy/scipy/torch (no Lightning). The spectral gap of a row-stochastic ``(n, n)`` matrix W is
``1 - |lambda_2|``, ``|lambda_2|`` the second largest eigenvalue modulus (1 is the largest, with eigenvector 1): the
fraction of the disagreement a round removes, in the slowest direction. 1 for exact averaging, 0 for a disconnected
(or periodic) graph. :func:`topology_spectral_gap` is the one call for a run's setup.

Which matrix, per topology:

- ``el-local`` / ``el-oracle``: E[W] is invariant under relabelling the nodes, so
  ``E[W] = alpha I + (1 - alpha) 11^T / n`` and the gap is ``1 - alpha`` in closed form (:func:`el_alpha`).
- a static graph, every neighbour used: W itself (:meth:`~lightning_mosaic.gossip.graphs.Graph.sparse_mixing_matrix`).
- peers sampled on a graph (:func:`~lightning_mosaic.gossip.graphs.graph_receivers` with ``peers = s``): node i's
  fragment reaches each of its neighbours with probability ``p_i = s / deg_i``, independently across senders, so the
  number m_j of values node j receives is Poisson-binomial. With the EL rule (average of one's own and the received
  values), ``E[W_jj] = E[1 / (1 + m_j)]`` and ``E[W_ji] = p_i E[1 / (2 + m_j^{(-i)})]`` (m_j without sender i),
  computed exactly (:func:`expected_mixing_matrix`); with fixed weights w_ji on the messages received (self weight 1
  minus their sum), ``E[W_ji] = p_i w_ji``.
- ``one-peer-exponential``: the mean of the tau matrices of one period, ``(I + P_k) / 2`` with ``P_k`` the shift by
  ``2^k`` (the matrix of a uniformly random round of the period).

Eigenvalues: dense (``numpy.linalg.eigvalsh`` when W is symmetric, ``eigvals`` otherwise) up to
:data:`~lightning_mosaic.gossip.graphs.DENSE_NODES_LIMIT` nodes; above, ARPACK (``scipy.sparse.linalg.eigsh`` /
``eigs``) on the deflated operator ``v -> W v - 1 (1^T v) / n`` (by Brauer's theorem its eigenvalues are those of W
with one eigenvalue 1 replaced by 0, whether W is doubly or only row-stochastic), never an ``(n, n)`` array, except
when W is circulant (``W[i, j] = r[(j - i) mod n]``: the ring, the exponential graph, the one-peer exponential
mean, also with sampled peers, with the library's weights; :func:`circulant_first_row`): its eigenvalues are then
the discrete Fourier transform of r (``numpy.fft``, O(n log n); ARPACK converges slowly on a ring's clustered
spectrum), exact.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
from scipy import stats
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs, eigsh
from torch import Tensor

from lightning_mosaic.gossip.graphs import (
    DENSE_NODES_LIMIT,
    GRAPH_TOPOLOGIES,
    WEIGHTS,
    Graph,
    check_graph_peers,
    exponential_offsets,
)
from lightning_mosaic.gossip.topology import TOPOLOGIES, validate_topology

SYMMETRY_TOLERANCE = 1e-12
"""Largest ``|W - W^T|`` entry for which W is treated as symmetric (its eigenvalues then come from ``eigvalsh`` /
``eigsh``)."""

CIRCULANT_TOLERANCE = 1e-15
"""Largest difference between an entry and its offset's entry in the first row for which a matrix is treated as
circulant (:func:`circulant_first_row`; a circulant matrix is normal, so its eigenvalues then move by at most the
number of nonzeros per row times this)."""

DP_CHUNK_VALUES = 1 << 20
"""Values per working array in the leave-one-out recursions of :func:`expected_mixing_matrix` (8 MiB)."""


def el_alpha(topology: str, num_nodes: int, peers: int) -> float:
    """alpha = (E tr W - 1) / (n - 1), the eigenvalue of E[W] on the disagreement space, for EL-Local and EL-Oracle.

    EL-Local in-degrees are Binomial(n - 1, p), p = s / (n - 1), and W_jj = 1 / (1 + m_j), so
    E tr W = (1 - (1 - p)^n) / p; EL-Oracle W = (I + A) / (s + 1) gives tr W = n / (s + 1).

    Raises:
        ValueError: See :func:`~lightning_mosaic.gossip.topology.validate_topology`.
    """
    validate_topology(topology, num_nodes, peers)
    n, s = num_nodes, peers
    if topology == "el-local":
        p = s / (n - 1)
        trace = (1.0 - (1.0 - p) ** n) / p
    else:
        trace = n / (s + 1)
    return (trace - 1.0) / (n - 1)


def expected_mixing_matrix(
    graph: Graph, peers: int | None = None, weights: str | None = None
) -> scipy.sparse.csr_array:
    """The expected mixing matrix of one round over a base graph (module docstring), as a sparse matrix.

    Args:
        graph: The base graph.
        peers: s (sampled neighbours, as :func:`~lightning_mosaic.gossip.graphs.graph_receivers` draws them) or
            ``None`` (every neighbour).
        weights: One of :data:`~lightning_mosaic.gossip.graphs.WEIGHTS`, or ``None``: Metropolis-Hastings with every
            neighbour, the EL rule with sampled peers. Unused by ``"one-peer-exponential"`` (every weight is 1/2).

    Returns:
        ``(n, n)`` float64 CSR array, row-stochastic, ``E[W][j, i]`` = the expected weight node j gives to node i.

    Raises:
        ValueError: For ``peers`` the graph cannot serve
            (:func:`~lightning_mosaic.gossip.graphs.check_graph_peers`) or unknown ``weights``.
    """
    s = check_graph_peers(graph, peers)
    if weights is not None and weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS} or None, got {weights!r}")
    n = graph.num_nodes
    if graph.name == "one-peer-exponential":
        offsets = exponential_offsets(n).numpy()
        nodes = np.arange(n)
        rows = np.concatenate([(nodes + o) % n for o in offsets] + [nodes])
        cols = np.concatenate([nodes] * len(offsets) + [nodes])
        values = np.concatenate([np.full(n * len(offsets), 0.5 / len(offsets)), np.full(n, 0.5)])
        return scipy.sparse.csr_array((values, (rows, cols)), shape=(n, n))
    if s is None:
        return graph.sparse_mixing_matrix(weights or "metropolis-hastings")
    senders, receivers = (t.numpy() for t in graph.edges())
    degrees = graph.degrees.numpy()
    probability = s / degrees[senders]
    if weights is not None:
        edge = probability * graph.weights(weights)[graph.valid].numpy()
        own = 1.0 - np.bincount(receivers, weights=edge, minlength=n)
    else:
        own, edge = _el_rule_expectations(n, senders, receivers, probability)
    nodes = np.arange(n)
    rows, cols = np.concatenate([receivers, nodes]), np.concatenate([senders, nodes])
    return scipy.sparse.csr_array((np.concatenate([edge, own]), (rows, cols)), shape=(n, n))


def _el_rule_expectations(
    n: int, senders: np.ndarray, receivers: np.ndarray, probability: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(E[W_jj] per node j, E[W_ji] per link i -> j)`` under the EL rule when link e is used with probability
    ``probability[e]``, independently across senders.

    Equal probabilities (every sender has the same degree): m_j ~ Binomial(in_j, p), summed from the binomial
    probabilities once per distinct in-degree. Otherwise exact dynamic programming: the Poisson-binomial law of
    every m_j by adding one sender at a time (vectorized over the nodes), then the law of m_j without sender i by
    dividing its generating function by ``(1 - p_i + p_i t)``, forwards when p_i <= 1/2 and backwards from the top
    when p_i > 1/2 (each step then multiplies the rounding errors by at most 1), once per (node, probability)
    class of links. Time ``O(sum_j in_j^2)``, memory ``O(n D_in)`` at most.
    """
    in_degrees = np.bincount(receivers, minlength=n)
    own, edge = np.ones(n), np.zeros(len(senders))
    if len(senders) == 0:
        return own, edge
    if np.all(probability == probability[0]):
        p = float(probability[0])
        for count in np.unique(in_degrees):
            m = np.arange(count + 1)
            own[in_degrees == count] = stats.binom.pmf(m, count, p) @ (1.0 / (1.0 + m))
            if count > 0:
                edge[in_degrees[receivers] == count] = p * (
                    stats.binom.pmf(m[:-1], count - 1, p) @ (1.0 / (2.0 + m[:-1]))
                )
        return own, edge
    # Links into one node with one probability have one expectation: compute it once per such class.
    classes, link_class = np.unique(np.stack([receivers, probability]), axis=1, return_inverse=True)
    class_receiver, class_p = classes[0].astype(np.int64), classes[1]
    class_value = np.zeros(len(class_p))
    order = np.argsort(receivers, kind="stable")
    slots = np.empty(len(senders), dtype=np.int64)
    slots[order] = np.arange(len(senders)) - (np.cumsum(in_degrees) - in_degrees)[receivers[order]]
    # Nodes in buckets of in-degree [2^(b-1), 2^b): each bucket's padded table is at most twice its content.
    bucket = np.frexp(in_degrees.astype(np.float64))[1]
    for b in np.unique(bucket[in_degrees > 0]):
        nodes = np.flatnonzero(bucket == b)
        local = np.full(n, -1)
        local[nodes] = np.arange(len(nodes))
        width = int(in_degrees[nodes].max())
        links = np.flatnonzero(bucket[receivers] == b)
        table = np.zeros((len(nodes), width))  # p of each in-neighbour, 0 on padding (a sender that never sends)
        table[local[receivers[links]], slots[links]] = probability[links]
        law = np.zeros((len(nodes), width + 1))
        law[:, 0] = 1.0
        for r in range(width):
            p = table[:, r : r + 1]
            shifted = law[:, :-1] * p
            law *= 1.0 - p
            law[:, 1:] += shifted
        own[nodes] = law @ (1.0 / (1.0 + np.arange(width + 1)))
        harmonic = 1.0 / (2.0 + np.arange(width))
        members = np.flatnonzero(bucket[class_receiver] == b)
        chunk = max(1, DP_CHUNK_VALUES // (width + 1))
        for start in range(0, len(members), chunk):
            part = members[start : start + chunk]
            for forwards, rows in ((True, part[class_p[part] <= 0.5]), (False, part[class_p[part] > 0.5])):
                if len(rows):
                    without = _divide_out(law[local[class_receiver[rows]]], class_p[rows], forwards)
                    class_value[rows] = class_p[rows] * (without @ harmonic)
    return own, class_value[link_class.reshape(-1)]


def _divide_out(law: np.ndarray, p: np.ndarray, forwards: bool) -> np.ndarray:
    """Coefficients of ``G(t) / (1 - p + p t)`` for each row's polynomial G (``law``: ``(r, w + 1)``, increasing
    powers), ``(r, w)``; ``forwards`` requires p <= 1/2, backwards p > 1/2 (module docstring of the caller)."""
    q = (1.0 - p)[:, None]
    p = p[:, None]
    width = law.shape[1] - 1
    out = np.zeros((law.shape[0], width))
    if forwards:
        out[:, :1] = law[:, :1] / q
        for m in range(1, width):
            out[:, m : m + 1] = (law[:, m : m + 1] - p * out[:, m - 1 : m]) / q
    else:
        out[:, -1:] = law[:, -1:] / p
        for m in range(width - 1, 0, -1):
            out[:, m - 1 : m] = (law[:, m : m + 1] - q * out[:, m : m + 1]) / p
    return np.clip(out, 0.0, None)


def circulant_first_row(matrix: scipy.sparse.sparray | scipy.sparse.spmatrix | np.ndarray) -> np.ndarray | None:
    """The first row r of ``matrix`` if it is circulant, ``W[i, j] = r[(j - i) mod n]``, else ``None``.

    Checked on the nonzero entries in O(nnz), vectorized: every offset ``(j - i) mod n`` that holds a nonzero holds
    one in all n rows, all within :data:`CIRCULANT_TOLERANCE` of the first row's.

    Args:
        matrix: ``(n, n)`` scipy.sparse matrix or numpy array.

    Returns:
        ``(n,)`` float64 ``r``, or ``None``.
    """
    coo = scipy.sparse.coo_array(matrix)
    coo.sum_duplicates()
    keep = coo.data != 0
    rows, cols, values = coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64), coo.data[keep]
    n = coo.shape[0]
    offsets = (cols - rows) % n
    if np.any(np.bincount(offsets, minlength=n) % n):  # an offset missing from some rows (each row has it once)
        return None
    first_row = np.zeros(n)
    first_row[offsets[rows == 0]] = values[rows == 0]
    if np.abs(values - first_row[offsets]).max(initial=0.0) > CIRCULANT_TOLERANCE:
        return None
    return first_row


def spectral_gap(matrix: scipy.sparse.sparray | scipy.sparse.spmatrix | np.ndarray | Tensor) -> float:
    """``1 - |lambda_2|`` of a row-stochastic matrix (module docstring).

    Args:
        matrix: ``(n, n)``, n >= 2, row-stochastic (a scipy.sparse matrix, a numpy array or a tensor). A dense
            input above :data:`~lightning_mosaic.gossip.graphs.DENSE_NODES_LIMIT` nodes is used as given (it
            exists already), the eigenvalues still come from ARPACK.

    Returns:
        The gap in [0, 1]; above the dense limit, from the DFT of the first row when ``matrix`` is circulant
        (:func:`circulant_first_row`).

    Raises:
        ValueError: If ``matrix`` is not square with n >= 2.
        RuntimeError: If ARPACK does not converge (n above the dense limit, ``matrix`` not circulant).
    """
    if isinstance(matrix, Tensor):
        matrix = matrix.detach().cpu().double().numpy()
    shape = matrix.shape
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 2:
        raise ValueError(f"matrix must be square (n, n) with n >= 2, got shape {tuple(shape)}")
    n = shape[0]
    sparse = scipy.sparse.issparse(matrix)
    if n > DENSE_NODES_LIMIT:
        first_row = circulant_first_row(matrix)
        if first_row is not None:
            moduli = np.abs(np.fft.fft(first_row)[1:])  # the eigenvalues but lambda_0 = sum(first_row) = 1
            return float(min(1.0, max(0.0, 1.0 - moduli.max())))
    asymmetry = abs(matrix - matrix.T).max() if sparse else np.abs(matrix - matrix.T).max()
    symmetric = float(asymmetry) <= SYMMETRY_TOLERANCE
    if n <= DENSE_NODES_LIMIT:
        dense = matrix.toarray() if sparse else np.asarray(matrix, dtype=np.float64)
        if symmetric:
            values = np.linalg.eigvalsh((dense + dense.T) / 2)
        else:
            values = np.linalg.eigvals(dense)
        moduli = np.sort(np.abs(values))[::-1]
        return float(min(1.0, max(0.0, 1.0 - moduli[1])))
    operator_matrix = scipy.sparse.csr_array(matrix) if sparse else np.asarray(matrix, dtype=np.float64)

    def deflated(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v).reshape(-1)
        return operator_matrix @ v - v.sum() / n

    operator = LinearOperator((n, n), matvec=deflated, dtype=np.float64)
    start = np.random.default_rng(0).standard_normal(n)  # fixed start vector: the same answer every call
    try:
        if symmetric:
            value = eigsh(
                operator, k=1, which="LM", v0=start, ncv=min(n - 1, 64), maxiter=100 * n, return_eigenvectors=False
            )[0]
        else:
            value = eigs(
                operator, k=1, which="LM", v0=start, ncv=min(n - 1, 64), maxiter=100 * n, return_eigenvectors=False
            )[0]
    except ArpackNoConvergence as error:
        raise RuntimeError(
            f"ARPACK did not converge on the {n}-node mixing matrix's second eigenvalue: {error}"
        ) from None
    return float(min(1.0, max(0.0, 1.0 - abs(value))))


def topology_spectral_gap(
    topology: str,
    num_nodes: int,
    peers: int | None,
    graph: Graph | None = None,
    weights: str | None = None,
) -> float:
    """The spectral gap of a run's (expected) mixing matrix, for every topology (module docstring).

    Args:
        topology: One of :data:`~lightning_mosaic.gossip.topology.TOPOLOGIES` (closed form; ``graph`` and
            ``weights`` must be ``None``) or :data:`~lightning_mosaic.gossip.graphs.GRAPH_TOPOLOGIES`.
        num_nodes: n.
        peers: s; ``None`` (every neighbour) on a graph topology only.
        graph: The base graph of a graph topology (:func:`~lightning_mosaic.gossip.graphs.make_graph`), of that
            topology and n nodes.
        weights: See :func:`expected_mixing_matrix`.

    Returns:
        The gap in [0, 1].

    Raises:
        ValueError: For an unknown topology, a missing or mismatched ``graph``, ``graph``/``weights`` given with an
            EL topology, or ``peers`` the topology cannot serve.
    """
    if topology in TOPOLOGIES:
        for name, value in (("graph", graph), ("weights", weights)):
            if value is not None:
                raise ValueError(f"{name} applies to the graph topologies {GRAPH_TOPOLOGIES}, got it with {topology!r}")
        if peers is None:
            raise ValueError(f"topology={topology!r} needs peers (s), an int; None (every neighbour) is for graphs")
        return 1.0 - el_alpha(topology, num_nodes, peers)
    if topology not in GRAPH_TOPOLOGIES:
        raise ValueError(f"topology must be one of {TOPOLOGIES + GRAPH_TOPOLOGIES}, got {topology!r}")
    if not isinstance(graph, Graph):
        raise ValueError(f"topology={topology!r} needs graph, its Graph (make_graph), got {graph!r}")
    if graph.name != topology or graph.num_nodes != num_nodes:
        raise ValueError(
            f"graph is a {graph.name!r} graph on {graph.num_nodes} nodes, but topology={topology!r} with "
            f"num_nodes (n) = {num_nodes}"
        )
    return spectral_gap(expected_mixing_matrix(graph, peers, weights))
