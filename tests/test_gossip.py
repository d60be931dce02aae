"""Gossip core: fragmentation, graphs, mixing, metrics (pure tensor code)."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_mosaic.gossip import (
    FragmentGossip,
    consensus_distance,
    el_local_adjacency,
    make_fragmentation,
    mix,
    mix_,
    mixing_matrices,
    mixing_matrices_from_adjacency,
    nonfinite_nodes,
    random_regular_graph,
    sample_adjacency,
    values_sent_per_node,
)

SETTINGS = settings(max_examples=40, deadline=None)


def reference_round(x: torch.Tensor, adjacency: torch.Tensor, fragments, order_seed: int | None = None):
    """Message-passing reference of one round (DESIGN.md steps 3-4), independent of the matrix code.

    Every sender puts a copy of its pre-round fragment in each receiver's inbox; receivers then average their own
    fragment with their inbox. ``order_seed`` shuffles the order in which inbox messages are summed.
    """
    n = x.shape[0]
    out = x.clone()
    for k, idx in enumerate(fragments):
        inbox = {j: [] for j in range(n)}
        for j in range(n):
            for i in range(n):
                for _ in range(int(adjacency[k, j, i])):
                    inbox[j].append(x[i, idx].clone())
        for j in range(n):
            msgs = inbox[j]
            if order_seed is not None:
                random.Random(order_seed + j).shuffle(msgs)
            total = x[j, idx].clone()
            for m in msgs:
                total = total + m
            out[j, idx] = total / (len(msgs) + 1)
    return out


# -- fragmentation ------------------------------------------------------------------------------------------------


@SETTINGS
@given(
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=8),
    k=st.integers(1, 8),
    kind=st.sampled_from(["random", "contiguous", "layer"]),
    seed=st.integers(0, 2**31),
)
def test_fragmentation_is_a_partition(sizes, k, kind, seed):
    d = sum(sizes)
    if k > d or (kind == "layer" and k > len(sizes)):
        with pytest.raises(ValueError, match="fragments"):
            make_fragmentation(sizes, k, kind, seed=seed)
        return
    f = make_fragmentation(sizes, k, kind, seed=seed)
    allidx = torch.cat(f.indices)
    assert allidx.numel() == d and torch.equal(allidx.sort().values, torch.arange(d))  # disjoint and complete
    for frag, idx in enumerate(f.indices):
        assert torch.all(f.assignment[idx] == frag)
    if kind in ("random", "contiguous"):
        assert max(f.sizes) - min(f.sizes) <= 1
    if kind == "layer":  # whole tensors only
        offsets = torch.tensor([0] + sizes).cumsum(0)
        for t in range(len(sizes)):
            assert f.assignment[offsets[t] : offsets[t + 1]].unique().numel() == 1
    again = make_fragmentation(sizes, k, kind, seed=seed)
    assert torch.equal(again.assignment, f.assignment)


def test_random_fragmentation_depends_on_seed_and_is_not_contiguous():
    a = make_fragmentation([1000], 4, "random", seed=0)
    b = make_fragmentation([1000], 4, "random", seed=1)
    assert not torch.equal(a.assignment, b.assignment)
    assert a.slices is None
    assert make_fragmentation([1000], 4, "contiguous").slices == (
        slice(0, 250),
        slice(250, 500),
        slice(500, 750),
        slice(750, 1000),
    )


def test_layer_fragmentation_balances_greedily():
    f = make_fragmentation([100, 60, 50, 10], 2, "layer")
    assert sorted(f.sizes) == [110, 110]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([10], 0, "random"), "fragments"),
        (([10], 11, "random"), "fragments"),
        (([5, 5], 3, "layer"), "fragments"),
        (([10], 2, "shuffled"), "fragmentation"),
        (([], 1, "random"), "tensor_sizes"),
    ],
)
def test_fragmentation_errors(args, match):
    with pytest.raises(ValueError, match=match):
        make_fragmentation(*args)


# -- topologies -----------------------------------------------------------------------------------------------------


@SETTINGS
@given(n=st.integers(2, 20), data=st.data(), seed=st.integers(0, 2**31))
def test_el_local_every_node_sends_to_s_distinct_other_peers(n, data, seed):
    s = data.draw(st.integers(1, n - 1))
    adjacency = el_local_adjacency(n, s, 3, torch.Generator().manual_seed(seed))
    assert adjacency.shape == (3, n, n)
    assert torch.all(adjacency.diagonal(dim1=1, dim2=2) == 0)
    assert torch.all(adjacency.sum(dim=1) == s)  # column i: the s receivers of node i
    assert set(adjacency.unique().tolist()) <= {0.0, 1.0}


def test_el_local_peers_are_uniform():
    n, s, draws = 6, 2, 6000
    adjacency = el_local_adjacency(n, s, draws, torch.Generator().manual_seed(0))
    counts = adjacency.sum(dim=0)  # (n, n): how often j received from i
    expected = draws * s / (n - 1)
    off = counts[~torch.eye(n, dtype=torch.bool)]
    assert torch.all((off - expected).abs() < 5 * expected**0.5)  # within 5 sigma of uniform


@SETTINGS
@given(n=st.integers(2, 24), data=st.data(), seed=st.integers(0, 2**31))
def test_random_regular_graph(n, data, seed):
    s = data.draw(st.integers(1, n - 1).filter(lambda s: n * s % 2 == 0))
    a = random_regular_graph(n, s, torch.Generator().manual_seed(seed))
    assert torch.equal(a, a.T)
    assert torch.all(a.diagonal() == 0)
    assert torch.all(a.sum(dim=1) == s)


@pytest.mark.parametrize(
    ("topology", "n", "s", "match"),
    [
        ("el-local", 1, 1, "num_nodes"),
        ("el-local", 4, 0, "peers"),
        ("el-local", 4, 4, "peers"),
        ("el-oracle", 5, 3, "n \\* s even"),
        ("ring", 4, 1, "topology"),
    ],
)
def test_topology_errors(topology, n, s, match):
    with pytest.raises(ValueError, match=match):
        sample_adjacency(topology, n, s, 1, torch.Generator())


# -- mixing ---------------------------------------------------------------------------------------------------------


@SETTINGS
@given(
    n=st.integers(2, 10),
    d=st.integers(1, 40),
    data=st.data(),
    topology=st.sampled_from(["el-local", "el-oracle"]),
    kind=st.sampled_from(["random", "contiguous"]),
    seed=st.integers(0, 2**31),
)
def test_mixing_matches_message_passing_in_any_receipt_order(n, d, data, topology, kind, seed):
    s = data.draw(st.integers(1, n - 1).filter(lambda s: topology == "el-local" or n * s % 2 == 0))
    k = data.draw(st.integers(1, d))
    f = make_fragmentation([d], k, kind, seed=seed)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    adjacency = sample_adjacency(topology, n, s, k, torch.Generator().manual_seed(seed)).double()
    mixed = mix(x, mixing_matrices_from_adjacency(adjacency), f)
    for order_seed in (None, 1, 2):
        torch.testing.assert_close(mixed, reference_round(x, adjacency, f.indices, order_seed))
    # every mixed value is a convex combination of the pre-round values of its coordinate
    assert torch.all(mixed >= x.min(dim=0).values - 1e-12) and torch.all(mixed <= x.max(dim=0).values + 1e-12)
    # identical nodes stay identical
    same = x[:1].expand(n, d).clone()
    torch.testing.assert_close(mix(same, mixing_matrices_from_adjacency(adjacency), f), same)


@pytest.mark.parametrize("kernel", ["dense", "index"])
@pytest.mark.parametrize("kind", ["random", "contiguous", "layer"])
def test_el_oracle_preserves_the_node_average(kind, kernel):
    n, s, sizes = 32, 4, [300, 40, 17]
    x = torch.randn(n, sum(sizes), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mean = x.mean(dim=0)
    gossip = FragmentGossip(sizes, n, fragments=3, peers=s, topology="el-oracle", fragmentation=kind, kernel=kernel)
    for _ in range(20):
        matrices = gossip.round_(x)
        if kernel == "dense":  # doubly stochastic
            torch.testing.assert_close(matrices.sum(dim=1), torch.ones(3, n, dtype=torch.float64))
    torch.testing.assert_close(x.mean(dim=0), mean, rtol=0, atol=1e-12)


def test_el_local_rounds_contract_the_consensus_distance():
    n, d = 16, 200
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    gossip = FragmentGossip([d], n, fragments=8, peers=3)
    before = consensus_distance(x)
    for _ in range(10):
        gossip.round_(x)
    assert consensus_distance(x) < 0.05 * before


def test_node_that_receives_nothing_keeps_its_parameters():
    n, d = 4, 6
    x = torch.randn(n, d)
    f = make_fragmentation([d], 2, "contiguous")
    adjacency = torch.zeros(2, n, n)
    adjacency[0, 1, 0] = adjacency[0, 2, 3] = 1  # fragment 0: 0 -> 1, 3 -> 2; node 0 and 3 receive nothing
    adjacency[1, 0, 1] = 1  # fragment 1: 1 -> 0; nodes 1, 2, 3 receive nothing
    out = mix(x, mixing_matrices_from_adjacency(adjacency), f)
    torch.testing.assert_close(out[0, :3], x[0, :3])
    torch.testing.assert_close(out[3, :3], x[3, :3])
    torch.testing.assert_close(out[1:, 3:], x[1:, 3:])
    torch.testing.assert_close(out[1, :3], (x[1, :3] + x[0, :3]) / 2)
    torch.testing.assert_close(out[0, 3:], (x[0, 3:] + x[1, 3:]) / 2)
    # and in random EL-Local draws: every node with in-degree 0 on fragment k keeps P_k
    gossip = FragmentGossip([50], 8, fragments=5, peers=1, seed=3)
    y = torch.randn(8, 50)
    before = y.clone()
    received = FragmentGossip([50], 8, fragments=5, peers=1, seed=3).next_graphs().adjacency().sum(dim=2)  # (K, n)
    gossip.round_(y)
    isolated = 0
    for k, idx in enumerate(gossip.fragmentation.indices):
        for j in range(8):
            if received[k, j] == 0:
                isolated += 1
                torch.testing.assert_close(y[j, idx], before[j, idx])
    assert isolated > 0


def test_k1_is_epidemic_learning():
    """K = 1 draws exactly EL's per-round matrix and gives exactly EL's result for the same seed."""
    n, s, d, rounds = 10, 3, 37, 5
    x0 = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for fragmentation in ("random", "contiguous", "layer"):
        gossip = FragmentGossip([d], n, fragments=1, peers=s, fragmentation=fragmentation, seed=7, kernel="dense")
        # EL: one graph per round from the same generator, whole model sent to each of the s peers
        el_generator = torch.Generator().set_state(gossip.generator.get_state())
        x, el = x0.clone(), x0.clone()
        for _ in range(rounds):
            matrices = gossip.round_(x)
            adjacency = el_local_adjacency(n, s, 1, el_generator).double()
            torch.testing.assert_close(matrices, mixing_matrices_from_adjacency(adjacency))
            el = reference_round(el, adjacency, [torch.arange(d)])
        torch.testing.assert_close(x, el)


def test_mixing_matrices_are_row_stochastic():
    w = mixing_matrices(12, 3, 4, torch.Generator().manual_seed(0))
    assert w.shape == (4, 12, 12)
    torch.testing.assert_close(w.sum(dim=2), torch.ones(4, 12))
    assert torch.all(w >= 0)


def test_mix_in_place_and_shape_errors():
    f = make_fragmentation([6], 2, "random")
    x = torch.randn(3, 6)
    w = mixing_matrices(3, 1, 2, torch.Generator())
    assert mix_(x, w, f) is x
    with pytest.raises(ValueError, match="matrices"):
        mix_(x, w[:1], f)
    with pytest.raises(ValueError, match="params"):
        mix_(torch.randn(6), w, f)
    with pytest.raises(ValueError, match="d = 6"):
        mix_(torch.randn(3, 7), w, f)


def test_gossip_core_does_not_import_lightning():
    code = "import sys, lightning_mosaic.gossip; assert 'lightning' not in sys.modules, 'lightning imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- metrics and state --------------------------------------------------------------------------------------------


def test_consensus_distance():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    assert consensus_distance(x).item() == pytest.approx(1.0)  # x_bar = (1, 0): (1 + 1) / 2
    assert consensus_distance(torch.ones(5, 3)).item() == 0.0


def test_consensus_distance_has_one_implementation():
    """The pure function, the workspace object and the sharded entry compute the same numbers, bit for bit."""
    from lightning_mosaic.distributed import global_consensus_distance
    from lightning_mosaic.gossip.metrics import ConsensusDistance
    from lightning_mosaic.metrics import ConsensusDistance as ModuleConsensusDistance

    workspace, sharded = ConsensusDistance(), ModuleConsensusDistance()
    for shape, dtype in (((16, 1000), torch.float32), ((3, 7), torch.float64), ((5, 4), torch.float32)):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(shape[1]), dtype=dtype)
        expected = consensus_distance(x)
        assert expected.dtype == dtype
        assert torch.equal(workspace(x), expected)
        assert torch.equal(sharded(x, shape[0]), expected)
        assert torch.equal(global_consensus_distance(x, shape[0]), expected)
    with pytest.raises(ValueError, match="needs an all_reduce"):
        workspace(torch.zeros(2, 3), 4)
    with pytest.raises(ValueError, match=r"params must be an \(n, d\) matrix"):
        consensus_distance(torch.zeros(3))


def test_consensus_distance_workspace_is_one_chunk_of_rows_whatever_n():
    """The float64 workspace holds r = workspace_bytes // (8 d) rows, not n: the same value, to float64 rounding, as
    one chunk of all rows, with chunks that do and do not divide n (and a chunk of one row)."""
    from lightning_mosaic.gossip.metrics import ConsensusDistance

    x = torch.randn(50, 300, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 + 1
    whole = ConsensusDistance(workspace_bytes=8 * 300 * 50)
    expected = whole(x)
    assert whole.workspace_nbytes == 8 * 300 * 50
    deviation = x - x.mean(dim=0)
    torch.testing.assert_close(expected, deviation.square().sum() / 50, rtol=1e-12, atol=0)
    for rows in (1, 7, 10):
        chunked = ConsensusDistance(workspace_bytes=8 * 300 * rows)
        torch.testing.assert_close(chunked(x), expected, rtol=1e-12, atol=0)
        assert chunked.workspace_nbytes == 8 * 300 * rows  # independent of n = 50
    small = ConsensusDistance(workspace_bytes=1)  # less than a row: one row at a time
    torch.testing.assert_close(small(x.float()), expected.float(), rtol=1e-6, atol=0)
    assert small.workspace_nbytes == 8 * 300
    with pytest.raises(ValueError, match="workspace_bytes must be an integer >= 1, got 0"):
        ConsensusDistance(workspace_bytes=0)


@pytest.mark.parametrize("k", [1, 2, 5, 37])
def test_values_sent_per_node_is_s_times_d_whatever_k(k):
    n, s, d = 9, 4, 37
    gossip = FragmentGossip([d], n, fragments=k, peers=s)
    adjacency = sample_adjacency("el-local", n, s, k, gossip.generator)
    sizes = torch.tensor(gossip.fragmentation.sizes, dtype=torch.float32)
    sent = (adjacency.sum(dim=1) * sizes[:, None]).sum(dim=0)  # values each sender ships
    assert torch.all(sent == values_sent_per_node(d, s))


def test_protocol_state_dict_resumes_the_graph_stream():
    a = FragmentGossip([20], 6, fragments=4, peers=2, seed=5)
    for _ in range(3):
        a.next_matrices()
    state = a.state_dict()
    expected = [a.next_matrices() for _ in range(3)]
    b = FragmentGossip([20], 6, fragments=4, peers=2, seed=5)
    b.load_state_dict(state)
    assert b.rounds == 3
    for w in expected:
        torch.testing.assert_close(b.next_matrices(), w)
    c = FragmentGossip([20], 6, fragments=4, peers=2, seed=6)
    assert not torch.equal(c.next_matrices(), FragmentGossip([20], 6, fragments=4, peers=2, seed=5).next_matrices())


# -- fault models ---------------------------------------------------------------------------------------------------


def test_drop_prob_zero_keeps_the_stream_and_one_changes_nothing():
    x = torch.randn(8, 30, generator=torch.Generator().manual_seed(0))
    plain, zero = (
        FragmentGossip([30], 8, fragments=3, peers=2, seed=4),
        FragmentGossip([30], 8, fragments=3, peers=2, seed=4, drop_prob=0.0),
    )
    for _ in range(3):
        torch.testing.assert_close(plain.next_matrices(), zero.next_matrices(), rtol=0, atol=0)
    lossy = FragmentGossip([30], 8, fragments=3, peers=2, seed=4, drop_prob=1.0)
    y = x.clone()
    for _ in range(5):
        lossy.round_(y)
    torch.testing.assert_close(y, x, rtol=0, atol=0)


@SETTINGS
@given(p=st.floats(0.05, 0.95), seed=st.integers(0, 2**31))
def test_dropped_messages_are_averaged_over_what_arrived(p, seed):
    gossip = FragmentGossip([12], 6, fragments=2, peers=3, seed=seed, drop_prob=p, kernel="dense")
    x = torch.randn(6, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    matrices = gossip.round_(x.clone())
    received = (matrices > 0).sum(dim=2) - 1  # copies each node averaged in, per fragment
    torch.testing.assert_close(matrices.diagonal(dim1=1, dim2=2), 1.0 / (received + 1).double())
    assert torch.all(received <= 5)


def test_drop_rate_matches_drop_prob():
    gossip = FragmentGossip([10], 20, fragments=10, peers=4, seed=0, drop_prob=0.3)
    delivered = sum(int(((gossip.next_matrices() > 0).sum() - 20 * 10).item()) for _ in range(50))
    sent = 50 * 10 * 20 * 4
    assert abs(delivered / sent - 0.7) < 0.02


def test_offline_nodes_neither_send_nor_receive_even_when_nan():
    x = torch.randn(8, 40, generator=torch.Generator().manual_seed(1))
    x[3] = float("nan")
    x[5, 7] = float("inf")
    offline = torch.zeros(8, dtype=torch.bool)
    offline[[3, 5]] = True
    before = x.clone()
    # s = n - 1: everyone would talk to everyone
    gossip = FragmentGossip([40], 8, fragments=4, peers=7, seed=2, kernel="dense")
    matrices = gossip.round_(x, offline)
    assert torch.isfinite(x[~offline]).all()  # nothing non-finite reached an online node
    torch.testing.assert_close(x[offline], before[offline], equal_nan=True)
    assert torch.all(matrices[:, offline][:, :, offline].diagonal(dim1=1, dim2=2) == 1)
    assert torch.all(matrices[:, ~offline][:, :, offline] == 0)
    online = (~offline).nonzero().flatten()
    torch.testing.assert_close(x[online], before[online].mean(0).expand(6, -1))  # complete graph on the online six


def test_nonfinite_nodes():
    x = torch.zeros(4, 3)
    x[1, 2] = float("nan")
    x[3, 0] = -float("inf")
    assert nonfinite_nodes(x).tolist() == [False, True, False, True]
