"""Weighted rounds (D-PSGD with Metropolis-Hastings weights) in every mixing kernel: the torch and fused backends
bit for bit, the dense kernel to float rounding, and hand-built ``W X`` on a ring and on irregular graphs.

The graphs and weights are built here by hand (receiver lists padded with the sender's own index), independently of
the graph module.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_mosaic.gossip import FragmentGossip, RoundGraphs, fused, make_fragmentation, mix_, mix_received_
from lightning_mosaic.gossip.mixing import aggregation_weights, workspace_size

needs_numba = pytest.mark.skipif(not fused.available(), reason="numba is a dependency; this checks an install without")


def neighbour_lists(edges: list[tuple[int, int]], n: int) -> list[list[int]]:
    """Sorted neighbours of every node of an undirected edge list."""
    out: list[set[int]] = [set() for _ in range(n)]
    for a, b in edges:
        out[a].add(b)
        out[b].add(a)
    return [sorted(x) for x in out]


def mh_round(edges: list[tuple[int, int]], n: int, k: int = 1):
    """``(K, n, D)`` receivers (padded with the sender), delivered mask, Metropolis-Hastings weights, and the dense
    ``(n, n)`` MH matrix ``W[j, i] = 1 / (1 + max(deg_i, deg_j))``, ``W[j, j] = 1 - sum``, all by hand."""
    nbrs = neighbour_lists(edges, n)
    deg = [len(x) for x in nbrs]
    width = max(deg)
    receivers = torch.arange(n).view(n, 1).repeat(1, width)
    delivered = torch.zeros(n, width, dtype=torch.bool)
    weights = torch.zeros(n, width, dtype=torch.float64)
    w = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for r, j in enumerate(nbrs[i]):
            receivers[i, r], delivered[i, r] = j, True
            weights[i, r] = 1.0 / (1 + max(deg[i], deg[j]))
            w[j, i] = weights[i, r]
    w += torch.diag(1.0 - w.sum(dim=1))
    expand = lambda t: t.expand(k, *t.shape).clone()  # noqa: E731
    return expand(receivers), expand(delivered), expand(weights), w


def random_weighted_round(n, s, k, seed, drop, padding):
    """Random receivers (s distinct others per sender), random weights below ``1 / (1 + in-degree of the
    receiver)`` so that every receiver's sum stays below 1, some lost messages, and padding entries (delivered False,
    receiver = sender, weight 0)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(k, n, n, generator=g)
    scores.diagonal(dim1=1, dim2=2).fill_(2.0)
    receivers = scores.topk(s, dim=2, largest=False).indices
    in_degree = torch.zeros(k, n, dtype=torch.float64).scatter_add_(
        1, receivers.reshape(k, -1), torch.ones(k, n * s, dtype=torch.float64)
    )
    receiver_in_degree = in_degree.gather(1, receivers.reshape(k, -1)).view(k, n, s)
    weights = torch.rand(k, n, s, generator=g, dtype=torch.float64) / (1 + receiver_in_degree)
    delivered = torch.rand(k, n, s, generator=g) >= drop
    if padding:
        pad = torch.rand(k, n, s, generator=g) < 0.3
        receivers = torch.where(pad, torch.arange(n).view(1, n, 1), receivers)
        delivered &= ~pad
        weights = torch.where(pad, 0.0, weights)
    return receivers, delivered, weights


def run_backends(x, receivers, delivered, frag, weights, backends=("torch", "fused")):
    out = []
    for backend in backends:
        y = x.clone()
        mix_received_(y, receivers, delivered, frag, backend=backend, weights=weights)
        out.append(y)
    return out


@needs_numba
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 30),
    sizes=st.lists(st.integers(1, 200), min_size=1, max_size=4),
    k=st.integers(1, 30),
    kind=st.sampled_from(["random", "contiguous", "layer"]),
    peers=st.integers(1, 6),
    drop=st.sampled_from([0.0, 0.3, 1.0]),
    padding=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_weighted_fused_is_bit_identical_to_torch(n, sizes, k, kind, peers, drop, padding, dtype, seed):
    k = min(k, sum(sizes)) if kind != "layer" else min(k, len(sizes))
    s = min(peers, n - 1)
    receivers, delivered, weights = random_weighted_round(n, s, k, seed, drop, padding)
    frag = make_fragmentation(sizes, k, kind, seed=seed)
    x = torch.randn(n, sum(sizes), generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    a, b = run_backends(x, receivers, delivered, frag, weights)
    assert torch.equal(a, b)
    # the weighted rule is not the EL rule (a test of weights that changed nothing would pass trivially)
    el = x.clone()
    mix_received_(el, receivers, delivered, frag, backend="torch")
    if delivered is None or bool(delivered.any()):  # with every message lost both rules keep every value
        assert not torch.equal(a, el)


@needs_numba
@pytest.mark.parametrize("strategy", ["tiles", "sorted"])
@pytest.mark.parametrize(("n", "d", "k", "s"), [(16, 70_000, 8, 3), (64, 9_000, 64, 8), (40, 3_000, 1024, 5)])
def test_weighted_fused_many_tiles_and_runs(n, d, k, s, strategy):
    """Both fused layouts across many tiles and tiny fragments (up to s = 8 messages per receiver: the loop past the
    unrolled cases), with drops and padding, against the torch backend bit for bit."""
    receivers, delivered, weights = random_weighted_round(n, s, k, n + k, 0.2, True)
    frag = make_fragmentation([d], k, "random", seed=n)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    expected = x.clone()
    mix_received_(expected, receivers, delivered, frag, backend="torch", weights=weights)
    coefficients = aggregation_weights(receivers, delivered, weights, x.dtype)
    fused.mix_received_fused_(x, receivers, delivered, frag.assignment, strategy, None, coefficients)
    assert torch.equal(x, expected)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_offline_nan_nodes_do_not_leak_and_keep_their_values(dtype):
    """Offline nodes (nothing delivered to or from them) hold NaN: they keep it, nobody else sees it, and a receiver
    that lost every message keeps its value exactly (self weight exactly 1)."""
    n, s, k, d = 14, 4, 3, 90
    receivers, delivered, weights = random_weighted_round(n, s, k, 5, 0.2, True)
    offline = torch.zeros(n, dtype=torch.bool)
    offline[[2, 9]] = True
    delivered &= ~offline.view(1, n, 1) & ~offline[receivers]
    delivered &= receivers != 11  # node 11 receives nothing this round
    x = torch.randn(n, d, dtype=dtype, generator=torch.Generator().manual_seed(1))
    x[offline] = float("nan")
    for kind in ("random", "contiguous"):
        frag = make_fragmentation([d], k, kind, seed=2)
        a, b = run_backends(x, receivers, delivered, frag, weights)
        assert torch.equal(a[~offline], b[~offline]) and torch.isnan(b[offline]).all()
        assert torch.isfinite(a[~offline]).all() and torch.isnan(a[offline]).all()
        assert torch.equal(a[11], x[11])


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("kind", ["random", "contiguous", "layer"])
def test_dense_kernel_equals_index_kernel_weighted(dtype, tolerance, kind):
    n, s, k = 12, 4, 3
    sizes = [40, 17, 23]
    receivers, delivered, weights = random_weighted_round(n, s, k, 7, 0.25, True)
    frag = make_fragmentation(sizes, k, kind, seed=3)
    x = torch.randn(n, sum(sizes), dtype=dtype, generator=torch.Generator().manual_seed(4))
    graphs = RoundGraphs(receivers, delivered, weights)
    matrices = graphs.mixing_matrices(dtype)
    assert matrices.dtype == dtype
    torch.testing.assert_close(matrices.sum(dim=2), torch.ones(k, n, dtype=dtype), rtol=0, atol=tolerance)
    dense = mix_(x.clone(), matrices, frag)
    (index,) = run_backends(x, receivers, delivered, frag, weights, backends=("torch",))
    torch.testing.assert_close(index, dense, rtol=tolerance, atol=tolerance)
    # without weights the matrices are the EL ones, exactly as before
    el = RoundGraphs(receivers, delivered).mixing_matrices(dtype)
    counts = graphs.adjacency().to(dtype) + torch.eye(n, dtype=dtype)
    assert torch.equal(el, counts / counts.sum(dim=-1, keepdim=True))


@pytest.mark.parametrize("kernel", ["dense", "index"])
def test_dpsgd_ring_round_equals_hand_built_w_x(kernel):
    """n = 6, K = 1: every node sends to both ring neighbours with weight 1/3 (Metropolis-Hastings on a ring), so
    one round is ``X <- W X`` with W the MH ring matrix (1/3 on the diagonal and the two neighbours)."""
    n, d = 6, 5
    receivers = torch.tensor([[[(i - 1) % n, (i + 1) % n] for i in range(n)]])
    weights = torch.full((1, n, 2), 1 / 3, dtype=torch.float64)
    w = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        w[i, i] = w[i, (i - 1) % n] = w[i, (i + 1) % n] = 1 / 3
    x = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = w @ x
    graphs = RoundGraphs(receivers, None, weights)
    frag = make_fragmentation([d], 1, "contiguous")
    if kernel == "dense":
        torch.testing.assert_close(graphs.mixing_matrices(torch.float64)[0], w, rtol=0, atol=1e-15)
        got = mix_(x.clone(), graphs.mixing_matrices(torch.float64), frag)
    else:
        got = mix_received_(x.clone(), receivers, None, frag, weights=weights)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.mean(dim=0), x.mean(dim=0), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "edges",
    [
        [(0, 1), (0, 2), (0, 3), (0, 4)],  # a star: degrees 4, 1, 1, 1, 1 (padding on the leaves)
        [(0, 1), (1, 2), (2, 3), (3, 4)],  # a path: degrees 1, 2, 2, 2, 1
        [(0, 1), (1, 2), (2, 0), (2, 3), (3, 4), (4, 5), (5, 3), (1, 4)],  # irregular, degrees 2, 3, 3, 3, 3, 2
    ],
)
@pytest.mark.parametrize("backend", ["dense", "torch", "fused"])
def test_metropolis_hastings_on_irregular_graphs_equals_w_x_and_preserves_the_average(edges, backend):
    if backend == "fused" and not fused.available():
        pytest.skip("numba is a dependency; this checks an install without")
    n = 1 + max(max(e) for e in edges)
    k, d = 2, 12
    receivers, delivered, weights, w = mh_round(edges, n, k)
    torch.testing.assert_close(w, w.T, rtol=0, atol=0)  # symmetric: doubly stochastic
    torch.testing.assert_close(w.sum(dim=0), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-15)
    assert bool((w >= 0).all())
    x = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    frag = make_fragmentation([d], k, "random", seed=1)
    if backend == "dense":
        got = mix_(x.clone(), RoundGraphs(receivers, delivered, weights).mixing_matrices(torch.float64), frag)
    else:
        got = mix_received_(x.clone(), receivers, delivered, frag, backend=backend, weights=weights)
    torch.testing.assert_close(got, w @ x, rtol=0, atol=1e-12)  # every fragment mixed with the same W
    torch.testing.assert_close(got.mean(dim=0), x.mean(dim=0), rtol=0, atol=1e-12)


def test_a_lost_message_leaves_its_weight_with_the_receiver():
    """Path 0 - 1 - 2, MH weights 1/3 (0 <-> 1 and 1 <-> 2, degrees 1, 2, 1): when 0's message to 1 is lost, node 1
    keeps 1 - 1/3 of its own value (the weight 0's fragment would have had) and node 0 still gets 1's."""
    receivers, delivered, weights, _ = mh_round([(0, 1), (1, 2)], 3)
    assert receivers[0, 0].tolist() == [1, 0]  # node 0: one neighbour, then padding
    delivered[0, 0, 0] = False
    message, own = aggregation_weights(receivers, delivered, weights)
    torch.testing.assert_close(own[0], torch.tensor([2 / 3, 2 / 3, 2 / 3], dtype=torch.float64))
    assert message[0, 0, 0] == 0.0
    x = torch.tensor([[3.0], [6.0], [9.0]], dtype=torch.float64)
    frag = make_fragmentation([1], 1, "contiguous")
    got = mix_received_(x.clone(), receivers, delivered, frag, weights=weights)
    expected = torch.tensor([[2 / 3 * 3 + 1 / 3 * 6], [2 / 3 * 6 + 1 / 3 * 9], [2 / 3 * 9 + 1 / 3 * 6]])
    torch.testing.assert_close(got, expected.double(), rtol=0, atol=1e-12)


def test_fragment_gossip_passes_the_round_weights_to_both_kernels(monkeypatch):
    """``FragmentGossip.round_`` mixes with ``graphs.weights`` (drawn by ``next_graphs``) in the index and the dense
    kernel, including a torch round that needs the weighted workspace."""
    n, d, k = 6, 30, 3
    receivers = torch.tensor([[(i - 1) % n, (i + 1) % n] for i in range(n)]).expand(k, n, 2).clone()
    weights = torch.full((k, n, 2), 1 / 3, dtype=torch.float64)
    graphs = RoundGraphs(receivers, None, weights)
    x = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    results = []
    for kernel in ("index", "dense"):
        gossip = FragmentGossip([d], n, fragments=k, peers=2, kernel=kernel)
        monkeypatch.setattr(gossip, "next_graphs", lambda offline=None: graphs)
        y = x.clone()
        gossip.round_(y)
        results.append(y)
    w = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        w[i, i] = w[i, (i - 1) % n] = w[i, (i + 1) % n] = 1 / 3
    for y in results:
        torch.testing.assert_close(y, w @ x, rtol=0, atol=1e-12)


def test_weighted_workspace_and_bad_weights_are_refused_naming_them():
    n, d, k = 5, 20, 2
    frag = make_fragmentation([d], k, "random", seed=0)
    receivers, delivered, weights = random_weighted_round(n, 2, k, 0, 0.0, False)
    x = torch.randn(n, d)
    plain = workspace_size(n, frag, "torch")
    assert workspace_size(n, frag, "torch", weighted=True) > plain
    assert workspace_size(n, frag, weighted=True) <= (3 * n + 1) * d
    with pytest.raises(ValueError, match=r"workspace must hold at least \d+ torch.float32 values on cpu \(weighted\)"):
        mix_received_(x, receivers, delivered, frag, x.new_empty(plain), backend="torch", weights=weights)
    with pytest.raises(ValueError, match=r"weights must have the shape of receivers \(2, 5, 2\), got \(2, 5\)"):
        mix_received_(x, receivers, delivered, frag, weights=weights[..., 0])
    with pytest.raises(ValueError, match="weights must be a floating-point tensor"):
        mix_received_(x, receivers, delivered, frag, weights=torch.ones_like(receivers))
    bad = weights.clone()
    bad[1, 3, 0] = -0.5
    with pytest.raises(ValueError, match=r"weights must be finite and >= 0, got -0.5 at .* = \(1, 3, 0\)"):
        mix_received_(x, receivers, delivered, frag, weights=bad)
    bad[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="weights must be finite"):
        RoundGraphs(receivers, delivered, bad).mixing_matrices()
    heavy = torch.ones_like(weights)
    with pytest.raises(ValueError, match=r"weights: node \d receives fragment 0 with weights summing to .* above 1"):
        mix_received_(x, receivers, delivered, frag, weights=heavy)
    assert torch.isfinite(x).all()  # nothing was mixed before the refusals
