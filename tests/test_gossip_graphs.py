"""Static base graphs (gossip/graphs.py), their per-round draws (graphs.graph_receivers) and spectral gaps
(gossip/spectral.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy import stats

from lightning_mosaic.analysis import exact_alpha
from lightning_mosaic.gossip import (
    DENSE_NODES_LIMIT,
    complete,
    el_alpha,
    expected_mixing_matrix,
    exponential,
    graph_receivers,
    make_graph,
    mixing_matrices,
    mixing_matrices_from_adjacency,
    random_regular,
    read_edge_list,
    receivers_to_adjacency,
    ring,
    spectral_gap,
    topology_spectral_gap,
    torus,
)
from lightning_mosaic.gossip import spectral as spectral_module
from lightning_mosaic.gossip import topology as topology_module
from lightning_mosaic.seeding import BASE_GRAPH_STREAM, derive_seed

# An irregular undirected graph (degrees 4, 3, 4, 5, 3, 3), written as a file by the tests that need it.
IRREGULAR = "# six nodes\n0 1\n0 2\n1 2\n1 3\n2 3\n2 4\n\n3 4\n4 5\n3 5  # a comment after an edge\n0 5\n0 3\n"


def _irregular(tmp_path):
    path = tmp_path / "irregular.txt"
    path.write_text(IRREGULAR)
    return make_graph("file", 6, graph=path)


def _write(tmp_path, text, name="graph.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _table(graph):
    return [graph.neighbours[i, : graph.degrees[i]].tolist() for i in range(graph.num_nodes)]


# --- neighbour tables, by hand ---------------------------------------------------------------------------------


def test_ring_5():
    graph = make_graph("ring", 5)
    assert graph.neighbours.tolist() == [[1, 4], [0, 2], [1, 3], [2, 4], [0, 3]]
    assert graph.degrees.tolist() == [2] * 5 and not graph.directed and graph.num_nodes == 5


@pytest.mark.parametrize("shape", [(3, 4), None])  # None: the most square factorization of 12 is 3 x 4
def test_torus_3x4(shape):
    graph = make_graph("torus", 12, shape=shape)
    assert graph.neighbours.tolist() == [
        [1, 3, 4, 8],
        [0, 2, 5, 9],
        [1, 3, 6, 10],
        [0, 2, 7, 11],
        [0, 5, 7, 8],
        [1, 4, 6, 9],
        [2, 5, 7, 10],
        [3, 4, 6, 11],
        [0, 4, 9, 11],
        [1, 5, 8, 10],
        [2, 6, 9, 11],
        [3, 7, 8, 10],
    ]


def test_torus_picks_the_most_square_shape():
    assert torus(36).neighbours[0].tolist() == [1, 5, 6, 30]  # 6 x 6, not 3 x 12 or 4 x 9
    assert torus(27).neighbours[0].tolist() == [1, 8, 9, 18]  # 3 x 9


def test_exponential_8_and_6():
    eight = make_graph("exponential", 8)
    assert eight.neighbours.tolist() == [
        [1, 2, 4],
        [2, 3, 5],
        [3, 4, 6],
        [4, 5, 7],
        [0, 5, 6],
        [1, 6, 7],
        [0, 2, 7],
        [0, 1, 3],
    ]
    six = exponential(6)  # tau = ceil(log2 6) = 3: offsets 1, 2, 4
    assert six.neighbours.tolist() == [[1, 2, 4], [2, 3, 5], [0, 3, 4], [1, 4, 5], [0, 2, 5], [0, 1, 3]]
    assert six.directed and six.in_degrees.tolist() == [3] * 6


def test_complete_4():
    assert make_graph("complete", 4).neighbours.tolist() == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]


def test_file_graph_pads_with_the_node_itself(tmp_path):
    graph = _irregular(tmp_path)
    assert graph.degrees.tolist() == [4, 3, 4, 5, 3, 3]
    assert _table(graph) == [[1, 2, 3, 5], [0, 2, 3], [0, 1, 3, 4], [0, 1, 2, 4, 5], [2, 3, 5], [0, 3, 4]]
    assert graph.neighbours[1, 3:].tolist() == [1, 1] and graph.neighbours[4, 3:].tolist() == [4, 4]
    directed = read_edge_list(_write(tmp_path, "0 1\n1 0\n1 2\n"), 3, directed=True)
    assert _table(directed) == [[1], [0, 2], []] and directed.in_degrees.tolist() == [1, 1, 1]


# --- weights --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", ["ring", "torus", "regular", "exponential", "file"])
def test_metropolis_hastings_is_doubly_stochastic_and_keeps_the_average(build, tmp_path):
    graph = {
        "ring": lambda: ring(7),
        "torus": lambda: torus(12),
        "regular": lambda: make_graph("regular", 20, degree=3, seed=4),
        "exponential": lambda: exponential(6),
        "file": lambda: _irregular(tmp_path),
    }[build]()
    w = graph.mixing_matrix("metropolis-hastings").numpy()
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, rtol=0, atol=1e-12)
    x = np.random.default_rng(0).standard_normal((graph.num_nodes, 5))
    np.testing.assert_allclose((w @ x).mean(axis=0), x.mean(axis=0), rtol=0, atol=1e-12)
    senders, receivers = graph.edges()
    assert (w[receivers.numpy(), senders.numpy()] > 0).all()  # only graph links carry weight
    assert np.count_nonzero(w) == len(senders) + graph.num_nodes


def test_metropolis_hastings_values_by_hand(tmp_path):
    graph = _irregular(tmp_path)  # degrees 4, 3, 4, 5, 3, 3
    w = graph.weights("metropolis-hastings")
    assert w.shape == (6, 5)  # D = the largest degree
    assert w[0].tolist() == [1 / 5, 1 / 5, 1 / 6, 1 / 5, 0.0]  # 0 (deg 4) -> 1 (3), 2 (4), 3 (5), 5 (3); padding 0
    assert w[1].tolist() == [1 / 5, 1 / 5, 1 / 6, 0.0, 0.0]  # 1 (deg 3) -> 0 (4), 2 (4), 3 (5)
    m = graph.mixing_matrix()
    assert m[3, 3] == pytest.approx(1 - 5 / 6, abs=1e-15) and m[3, 0] == 1 / 6
    assert torch.equal(m, m.T)
    assert exponential(8).weights().unique().tolist() == [0.25]  # 1 / (tau + 1)


def test_link_weights_of_a_sampled_round_are_the_graph_weights(tmp_path):
    graph = _irregular(tmp_path)
    receivers, _ = graph_receivers(graph, 2, 3, torch.Generator().manual_seed(0))
    w = graph.mixing_matrix().numpy()
    for kind, matrix in (("metropolis-hastings", w), ("uniform", graph.mixing_matrix("uniform").numpy())):
        looked_up = matrix[receivers.numpy(), np.arange(6)[None, :, None]]  # W[j, i] of every message i -> j
        assert torch.equal(graph.link_weights(receivers, kind), torch.from_numpy(looked_up))
    padded, delivered = graph_receivers(graph, None, 1, None)
    assert (graph.link_weights(padded)[~delivered] == 0).all()


def test_uniform_weights_are_row_stochastic(tmp_path):
    graph = _irregular(tmp_path)
    w = graph.mixing_matrix("uniform").numpy()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.abs(w.sum(axis=0) - 1).max() > 0.05  # irregular: not doubly stochastic
    np.testing.assert_allclose(w[3], 1 / 6, rtol=0, atol=1e-15)  # node 3 hears 5 neighbours: six values, 1/6 each
    assert w[1, 0] == w[1, 1] == 1 / 4
    directed = read_edge_list(_write(tmp_path, "0 1\n2 1\n1 2\n"), 3, directed=True)
    for kind in ("uniform", "metropolis-hastings"):
        np.testing.assert_allclose(directed.mixing_matrix(kind).sum(axis=1).numpy(), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(directed.mixing_matrix("uniform")[1], 1 / 3, rtol=0, atol=1e-15)  # 1 hears 0 and 2


def test_dense_mixing_matrix_refused_above_the_limit():
    big = ring(DENSE_NODES_LIMIT + 1)
    with pytest.raises(ValueError, match=f"n = {DENSE_NODES_LIMIT + 1} > {DENSE_NODES_LIMIT}"):
        big.mixing_matrix()
    assert big.sparse_mixing_matrix().nnz == 3 * (DENSE_NODES_LIMIT + 1)


# --- spectral gaps --------------------------------------------------------------------------------------------


def _ring_gap(n):
    values = (1 + 2 * np.cos(2 * np.pi * np.arange(n) / n)) / 3
    return 1 - np.sort(np.abs(values))[::-1][1]


def test_ring_gap_dense():
    n = 50
    assert topology_spectral_gap("ring", n, None, make_graph("ring", n)) == pytest.approx(_ring_gap(n), abs=1e-9)
    assert spectral_gap(ring(n).mixing_matrix()) == pytest.approx(_ring_gap(n), abs=1e-9)  # a dense tensor too


def test_ring_gap_sparse_above_the_limit_builds_no_dense_matrix(monkeypatch):
    n = DENSE_NODES_LIMIT + 452

    def refuse(*args, **kwargs):
        raise AssertionError("a dense (n, n) computation above the limit")

    for name in ("eigvals", "eigvalsh", "eig", "eigh"):
        monkeypatch.setattr(np.linalg, name, refuse)
    monkeypatch.setattr(scipy.sparse.csr_array, "toarray", refuse)
    assert topology_spectral_gap("ring", n, None, ring(n)) == pytest.approx(_ring_gap(n), abs=1e-9)


def _refuse(*args, **kwargs):
    raise AssertionError("ARPACK called on a circulant matrix")


def test_ring_gap_of_20000_nodes_is_exact_from_the_dft(monkeypatch):
    n = 20000
    monkeypatch.setattr(spectral_module, "eigs", _refuse)
    monkeypatch.setattr(spectral_module, "eigsh", _refuse)
    gap = topology_spectral_gap("ring", n, None, ring(n))
    assert gap == pytest.approx(1 - (1 + 2 * math.cos(2 * math.pi / n)) / 3, rel=0, abs=1e-12)


@pytest.mark.parametrize("peers", [None, 2])
def test_exponential_gap_above_the_limit_from_the_dft_matches_arpack(peers, monkeypatch):
    n = DENSE_NODES_LIMIT + 1  # not a power of 2
    matrix = expected_mixing_matrix(exponential(n), peers)
    assert spectral_module.circulant_first_row(matrix) is not None
    exact = spectral_gap(matrix)
    monkeypatch.setattr(spectral_module, "circulant_first_row", lambda matrix: None)
    assert exact == pytest.approx(spectral_gap(matrix), rel=0, abs=1e-9)


def test_non_circulant_matrix_above_the_limit_goes_through_arpack(monkeypatch):
    matrix = make_graph("regular", DENSE_NODES_LIMIT + 2, degree=3, seed=0).sparse_mixing_matrix()
    assert spectral_module.circulant_first_row(matrix) is None
    assert spectral_module.circulant_first_row(torus(DENSE_NODES_LIMIT + 2).sparse_mixing_matrix()) is None
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return scipy.sparse.linalg.eigsh(*args, **kwargs)

    monkeypatch.setattr(spectral_module, "eigsh", counted)
    assert 0 < spectral_gap(matrix) < 1 and len(calls) == 1
    monkeypatch.setattr(spectral_module, "circulant_first_row", _refuse)  # the dense path never looks
    assert spectral_gap(ring(50).sparse_mixing_matrix()) == pytest.approx(_ring_gap(50), abs=1e-12)


def test_circulant_first_row():
    w = expected_mixing_matrix(make_graph("one-peer-exponential", 8)).toarray()  # W[i + 2^k, i] = 1 / 6
    np.testing.assert_array_equal(spectral_module.circulant_first_row(w), [0.5, 0, 0, 0, 1 / 6, 0, 1 / 6, 1 / 6])
    w[3, 3] -= 1e-3
    w[3, 4] += 1e-3  # still row-stochastic, no longer circulant
    assert spectral_module.circulant_first_row(w) is None
    assert spectral_module.circulant_first_row(complete(6).sparse_mixing_matrix("uniform")) is not None


def test_complete_graph_gap_is_one():
    for weights in ("uniform", "metropolis-hastings"):
        assert topology_spectral_gap("complete", 6, None, complete(6), weights) == pytest.approx(1.0, abs=1e-9)


def test_el_gaps_closed_form_and_monte_carlo():
    n, s = 8, 2
    for topology in ("el-local", "el-oracle"):
        gap = topology_spectral_gap(topology, n, s)
        assert gap == 1 - exact_alpha(topology, n, s) == 1 - el_alpha(topology, n, s)
        mean = mixing_matrices(n, s, 20000, torch.Generator().manual_seed(0), topology).double().mean(0)
        assert spectral_gap(mean) == pytest.approx(gap, abs=0.02)
        assert (mean.trace() - 1) / (n - 1) == pytest.approx(1 - gap, abs=0.005)
    # EL-Local is the complete graph with s sampled neighbours: the exact expectation gives the closed form
    for n, s in ((8, 2), (30, 5)):
        sampled = topology_spectral_gap("complete", n, s, complete(n))
        assert sampled == pytest.approx(topology_spectral_gap("el-local", n, s), abs=1e-9)


def _brute_force_expectation(graph, s):
    """E[W] under the EL rule by enumerating every sender's s-subsets (all equally likely)."""
    n = graph.num_nodes
    choices = [itertools.combinations(row, s) for row in _table(graph)]
    total, count = np.zeros((n, n)), 0
    for combo in itertools.product(*choices):
        received = np.eye(n)
        for sender, chosen in enumerate(combo):
            received[list(chosen), sender] += 1
        total += received / received.sum(axis=1, keepdims=True)
        count += 1
    return total / count


@pytest.mark.parametrize("peers", [1, 2, 3])  # 3: nodes of degree 3 send to all (p = 1), others p = 3/4, 3/5
def test_expected_matrix_of_sampled_neighbours_is_exact(peers, tmp_path):
    graph = _irregular(tmp_path)
    expected = expected_mixing_matrix(graph, peers).toarray()
    np.testing.assert_allclose(expected, _brute_force_expectation(graph, peers), rtol=0, atol=1e-12)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    regular = make_graph("regular", 8, degree=3, seed=1)  # equal probabilities: the binomial sums
    np.testing.assert_allclose(
        expected_mixing_matrix(regular, peers).toarray(), _brute_force_expectation(regular, peers), rtol=0, atol=1e-12
    )


def test_expected_matrix_against_drawn_graphs(tmp_path):
    graph = _irregular(tmp_path)
    draws = 20000
    receivers, delivered = graph_receivers(graph, 2, draws, torch.Generator().manual_seed(3))
    mean = mixing_matrices_from_adjacency(receivers_to_adjacency(receivers, delivered).double()).mean(0).numpy()
    expected = expected_mixing_matrix(graph, 2).toarray()
    assert np.abs(mean - expected).max() < 0.01  # standard error of each entry <= 0.5 / sqrt(20000) = 0.0035
    fixed = expected_mixing_matrix(graph, 2, "metropolis-hastings").toarray()  # fixed weights on what arrives
    w = graph.mixing_matrix().numpy()
    p = 2 / graph.degrees.numpy()
    off = ~np.eye(6, dtype=bool)
    np.testing.assert_allclose(fixed[off], (w * p[None, :])[off], rtol=0, atol=1e-15)
    np.testing.assert_allclose(fixed.sum(axis=1), 1.0, rtol=0, atol=1e-12)


def test_one_peer_exponential_gap_is_that_of_the_period_mean():
    n = 8
    graph = make_graph("one-peer-exponential", n)
    rounds = [receivers_to_adjacency(graph_receivers(graph, None, 1, None, t)[0]) for t in range(3)]
    mean = torch.stack([mixing_matrices_from_adjacency(a.double())[0] for a in rounds]).mean(0)
    np.testing.assert_allclose(expected_mixing_matrix(graph).toarray(), mean.numpy(), rtol=0, atol=1e-15)
    assert topology_spectral_gap("one-peer-exponential", n, None, graph) == pytest.approx(spectral_gap(mean), abs=1e-12)


# --- per-round draws ------------------------------------------------------------------------------------------


def _is_neighbour(graph, receivers):
    k, n, _ = receivers.shape
    table = graph.neighbours[None].expand(k, n, -1)
    valid = graph.valid[None].expand(k, n, -1)
    return ((receivers[..., :, None] == table[..., None, :]) & valid[..., None, :]).any(-1)


@pytest.mark.parametrize("peers", [None, 1, 3])
def test_every_node_sends_only_to_graph_neighbours(peers, tmp_path):
    graphs = [ring(9), torus(12), make_graph("regular", 16, degree=4, seed=2), exponential(10), _irregular(tmp_path)]
    for graph in graphs:
        if peers is not None and peers > int(graph.degrees.min()):
            continue
        receivers, delivered = graph_receivers(graph, peers, 6, torch.Generator().manual_seed(0))
        s = int(graph.degrees.max()) if peers is None else peers
        assert receivers.shape == (6, graph.num_nodes, s) and receivers.dtype == torch.int64
        sent = torch.ones_like(receivers, dtype=torch.bool) if delivered is None else delivered
        assert _is_neighbour(graph, receivers)[sent].all(), graph.name
        marked = torch.where(sent, receivers, -1 - torch.arange(s))  # padding: distinct negative marks
        ordered = marked.sort(dim=2).values
        assert (ordered[..., 1:] != ordered[..., :-1]).all(), "s distinct receivers per fragment"
        if delivered is not None:  # padding: the sender's own index, not delivered
            own = torch.arange(graph.num_nodes)[None, :, None].expand_as(receivers)
            assert torch.equal(receivers[~delivered], own[~delivered])
            assert torch.equal(delivered.sum(2)[0], graph.degrees)


def test_static_irregular_round_marks_the_padding(tmp_path):
    receivers, delivered = graph_receivers(_irregular(tmp_path), None, 2, None)
    assert receivers[1, 1].tolist() == [0, 2, 3, 1, 1] and delivered[1, 1].tolist() == [True] * 3 + [False] * 2
    assert graph_receivers(ring(5), None, 3, None)[1] is None  # regular: no padding, no mask


def test_sampled_neighbours_are_uniform():
    graph = make_graph("complete", 6)  # every node has 5 neighbours: C(5, 2) = 10 equally likely pairs
    receivers, _ = graph_receivers(graph, 2, 20000, torch.Generator().manual_seed(11))
    pairs = receivers[:, 0].sort(dim=1).values  # node 0's receivers over 20,000 fragments
    codes = pairs[:, 0] * 6 + pairs[:, 1]
    counts = torch.bincount(codes, minlength=36)[[a * 6 + b for a, b in itertools.combinations(range(1, 6), 2)]]
    assert int(counts.sum()) == 20000
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3
    per_neighbour = torch.bincount(receivers[:, 3].reshape(-1), minlength=6)  # node 3: each neighbour 2/5 of draws
    assert per_neighbour[3] == 0
    np.testing.assert_allclose(per_neighbour[[0, 1, 2, 4, 5]].numpy() / 20000, 0.4, atol=0.015)


def test_one_fragment_draw_at_a_time_gives_the_same_receivers(monkeypatch):
    graph = make_graph("regular", 12, degree=4, seed=0)
    together = graph_receivers(graph, 2, 5, torch.Generator().manual_seed(1))[0]
    monkeypatch.setattr(topology_module, "DENSE_DRAW_LIMIT", 0)  # force the per-fragment path
    assert torch.equal(graph_receivers(graph, 2, 5, torch.Generator().manual_seed(1))[0], together)


def test_one_peer_exponential_cycles_through_the_powers_of_two():
    for n, tau in ((8, 3), (6, 3), (5, 3), (2, 1)):
        graph = make_graph("one-peer-exponential", n)
        for t in range(2 * tau + 1):
            receivers, delivered = graph_receivers(graph, None, 2, None, round=t)
            expected = (torch.arange(n) + 2 ** (t % tau)) % n
            assert delivered is None and receivers.shape == (2, n, 1)
            assert torch.equal(receivers[:, :, 0], expected.expand(2, n))
        assert torch.equal(graph_receivers(graph, 1, 1, None, round=1)[0], graph_receivers(graph, None, 1, None, 1)[0])


def test_static_draws_leave_the_generator_untouched():
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    cases = [
        (ring(7), None),
        (make_graph("one-peer-exponential", 8), None),
        (make_graph("regular", 10, degree=3, seed=0), 3),  # s = every degree: every neighbour, nothing drawn
    ]
    for graph, peers in cases:
        graph_receivers(graph, peers, 4, generator, round=3)
        assert torch.equal(generator.get_state(), state), graph.name
    graph_receivers(ring(7), 1, 4, generator)
    assert not torch.equal(generator.get_state(), state)  # sampled peers do draw


def test_same_seed_same_regular_graph():
    first = make_graph("regular", 30, degree=4, seed=7)
    assert torch.equal(first.neighbours, make_graph("regular", 30, degree=4, seed=7).neighbours)
    assert not torch.equal(first.neighbours, make_graph("regular", 30, degree=4, seed=8).neighbours)
    drawn = random_regular(30, 4, torch.Generator().manual_seed(derive_seed(7, BASE_GRAPH_STREAM)))
    assert torch.equal(first.neighbours, drawn.neighbours)
    assert first.name == "regular" and _table(first) == [sorted(row) for row in _table(first)]
    senders, receivers = first.edges()
    assert set(zip(senders.tolist(), receivers.tolist())) == set(zip(receivers.tolist(), senders.tolist()))


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("0 1\n# loop\n2 2\n", 3, r"'2 2': self-loop \(node 2 linked to itself\)"),
        ("0 1\n1 7\n", 2, r"'1 7': node id 7 is out of range, node ids are in \[0, 5\] for n = 6"),
        ("0 1\n\n-1 2\n", 3, r"'-1 2': node id -1 is out of range"),
        ("0 1\n1 2\n1 0\n", 3, r"'1 0': duplicate edge 1-0, already given on line 1"),
        ("0 1\n0 1\n", 2, r"'0 1': duplicate edge 0-1, already given on line 1"),
        ("0 1\n1 2 3\n", 2, r"'1 2 3': malformed line, expected two integer node ids 'u v'"),
        ("0 1\na b\n", 2, r"'a b': malformed line"),
        ("0 1\n1.5 2\n", 2, r"'1.5 2': malformed line"),
        ("0 1\n4\n", 2, r"'4': malformed line"),
        ("0 1\n1,2\n", 2, r"'1,2': malformed line"),
    ],
)
def test_bad_edge_list_lines_name_file_and_line(tmp_path, text, line, message):
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match=f"{path}:{line}: {message}"):
        make_graph("file", 6, graph=path)


def test_edge_list_directed_mode(tmp_path):
    both_ways = _write(tmp_path, "0 1\n1 0\n1 2\n2 0\n")
    assert make_graph("file", 3, graph=both_ways, directed=True).degrees.tolist() == [1, 2, 1]
    with pytest.raises(ValueError, match=r":2: '1 0': duplicate edge"):
        make_graph("file", 3, graph=both_ways)
    with pytest.raises(ValueError, match=r":2: '0 1': duplicate link 0-1, already given on line 1"):
        make_graph("file", 3, graph=_write(tmp_path, "0 1\n0 1\n", "d.txt"), directed=True)


def test_empty_and_missing_edge_lists(tmp_path):
    empty = _write(tmp_path, "# nothing here\n\n   \n")
    with pytest.raises(ValueError, match=f"{empty}: the edge-list file holds no edge"):
        make_graph("file", 4, graph=empty)
    with pytest.raises(ValueError, match="graph='.*missing.txt': cannot read the edge-list file"):
        make_graph("file", 4, graph=tmp_path / "missing.txt")


def test_disconnected_graph_is_refused_unless_allowed(tmp_path):
    path = _write(tmp_path, "0 1\n1 2\n2 0\n3 4\n")  # a triangle, an edge and an isolated node 5
    with pytest.raises(ValueError, match=r"disconnected: 3 components, the largest has 3 nodes.*allow_disconnected"):
        make_graph("file", 6, graph=path)
    graph = make_graph("file", 6, graph=path, allow_disconnected=True)
    assert graph.num_components() == 3 and graph.degrees.tolist() == [2, 2, 2, 1, 1, 0]
    assert spectral_gap(graph.sparse_mixing_matrix()) == 0.0
    with pytest.raises(ValueError, match=r"topology='regular' on n = 20 nodes is disconnected: 10 components"):
        make_graph("regular", 20, degree=1)


def test_directed_graph_with_two_source_groups_is_refused_unless_allowed(tmp_path):
    # weakly connected, but nodes 0 and 2 receive from no one: they never agree
    path = _write(tmp_path, "0 1\n2 1\n" + "".join(f"{u} {u + 1}\n" for u in range(2, 15)))
    with pytest.raises(
        ValueError,
        match=r"on n = 16 nodes is directed and 2 groups of nodes receive from no other group \(nodes \[0\] and \[2\]\)"
        r".*allow_disconnected=True \(it accepts this too\)",
    ):
        make_graph("file", 16, graph=path, directed=True)
    graph = make_graph("file", 16, graph=path, directed=True, allow_disconnected=True)
    assert graph.num_components() == 1 and [group.tolist() for group in graph.source_components()] == [[0], [2]]
    ring_path = _write(tmp_path, "".join(f"{u} {(u + 1) % 16}\n" for u in range(16)), "ring.txt")
    assert make_graph("file", 16, graph=ring_path, directed=True).source_components()[0].tolist() == list(range(16))
    for topology in ("exponential", "one-peer-exponential"):
        assert len(make_graph(topology, 12).source_components()) == 1
    # a group of several nodes that hears no one, among many: a few nodes of a few groups
    many = "".join(f"{u} {(u + 1) % 7}\n{u} 11\n" for u in range(7)) + "".join(f"{u} 11\n" for u in range(7, 11))
    with pytest.raises(
        ValueError, match=r"5 groups .* \(nodes \[0, 1, 2, 3, 4, \.\.\.\] \(7 nodes\), \[7\], \[8\] and 2 more groups\)"
    ):
        make_graph("file", 12, graph=_write(tmp_path, many, "many.txt"), directed=True)
    star = "".join(f"0 {u}\n" for u in range(1, 12))  # one node every other hears from: consensus on node 0's value
    assert len(make_graph("file", 12, graph=_write(tmp_path, star, "star.txt"), directed=True).source_components()) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topology": "star", "num_nodes": 5}, r"topology must be one of \('ring', 'torus', .*got 'star'"),
        ({"topology": "ring", "num_nodes": 2}, r"num_nodes \(n\) must be an integer >= 3 for topology='ring'.*got 2"),
        ({"topology": "complete", "num_nodes": 1}, r"num_nodes \(n\) must be an integer >= 2 .*got 1"),
        ({"topology": "exponential", "num_nodes": 1}, r"num_nodes \(n\) must be an integer >= 2 .*got 1"),
        ({"topology": "torus", "num_nodes": 12, "shape": (2, 6)}, r"shape\[0\] \(torus side a\) must be .*>= 3.*2"),
        ({"topology": "torus", "num_nodes": 16, "shape": (3, 4)}, r"shape \(3, 4\) gives a \* b = 12 nodes, not .* 16"),
        ({"topology": "torus", "num_nodes": 16, "shape": 4}, r"shape must be a pair \(a, b\).*got 4"),
        ({"topology": "torus", "num_nodes": 13}, r"n = 13 cannot be written so \(n is prime\)"),
        ({"topology": "torus", "num_nodes": 10}, r"n = 10 cannot be written so \(it has no factors a, b >= 3\)"),
        ({"topology": "torus", "num_nodes": 8}, r"num_nodes \(n\) must be an integer >= 9 for topology='torus'"),
        ({"topology": "regular", "num_nodes": 10}, r"topology='regular' needs degree"),
        ({"topology": "regular", "num_nodes": 10, "degree": 0}, r"degree must be an integer in \[1, 9\].*got 0"),
        ({"topology": "regular", "num_nodes": 10, "degree": 10}, r"degree must be an integer in \[1, 9\].*got 10"),
        ({"topology": "regular", "num_nodes": 9, "degree": 3}, r"degree = 3 on n = 9 nodes: .*n \* degree is even"),
        ({"topology": "file", "num_nodes": 4}, r"topology='file' needs graph"),
        ({"topology": "ring", "num_nodes": 5, "degree": 2}, r"degree applies to topology='regular' only.*'ring'"),
        ({"topology": "ring", "num_nodes": 5, "shape": (5, 1)}, r"shape applies to topology='torus' only"),
        ({"topology": "ring", "num_nodes": 5, "graph": "g.txt"}, r"graph applies to topology='file' only"),
        ({"topology": "ring", "num_nodes": 5, "directed": True}, r"directed=True applies to topology='file' only"),
    ],
)
def test_make_graph_refuses(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_graph(**kwargs)


def test_peers_above_a_degree_names_the_node(tmp_path):
    graph = _irregular(tmp_path)
    with pytest.raises(ValueError, match=r"peers \(s\) = 4 is above the degree of node 1 \(3\) in the 'file' graph"):
        graph_receivers(graph, 4, 1, torch.Generator())
    with pytest.raises(ValueError, match=r"peers \(s\) = 3 is above the degree of node 0 \(2\) in the 'ring' graph"):
        expected_mixing_matrix(ring(5), 3)
    with pytest.raises(ValueError, match=r"one-peer-exponential' sends to one peer per round.*got 2"):
        graph_receivers(make_graph("one-peer-exponential", 8), 2, 1, torch.Generator())
    with pytest.raises(ValueError, match=r"peers \(s\) must be an integer >= 1"):
        graph_receivers(graph, 0, 1, torch.Generator())


def test_topology_spectral_gap_refuses_mismatches():
    with pytest.raises(ValueError, match=r"graph is a 'ring' graph on 5 nodes, but topology='torus'"):
        topology_spectral_gap("torus", 5, None, ring(5))
    with pytest.raises(ValueError, match=r"graph is a 'ring' graph on 5 nodes, but .*num_nodes \(n\) = 6"):
        topology_spectral_gap("ring", 6, None, ring(5))
    with pytest.raises(ValueError, match=r"topology='ring' needs graph"):
        topology_spectral_gap("ring", 5, None)
    with pytest.raises(ValueError, match=r"graph applies to the graph topologies"):
        topology_spectral_gap("el-local", 5, 1, ring(5))
    with pytest.raises(ValueError, match=r"weights must be one of"):
        topology_spectral_gap("ring", 5, None, ring(5), "max-degree")
    with pytest.raises(ValueError, match=r"topology must be one of \('el-local', 'el-oracle', 'ring'"):
        topology_spectral_gap("star", 5, 1)
    assert math.isclose(topology_spectral_gap("ring", 5, 1, ring(5)), spectral_gap(expected_mixing_matrix(ring(5), 1)))
