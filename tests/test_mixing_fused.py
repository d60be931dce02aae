"""The fused CPU mixing kernel (numba) against the torch index kernel: bit-identical, in every layout and case."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_mosaic.gossip import FragmentGossip, fused, make_fragmentation, mix_received_, mixing, sample_receivers
from lightning_mosaic.gossip.mixing import FUSED_MIN_VALUES, default_backend, workspace_size

pytestmark = pytest.mark.skipif(not fused.available(), reason="numba is a dependency; this checks an install without")


def _round(n, sizes, k, kind, peers, drop, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    frag = make_fragmentation(sizes, k, kind, seed=seed)
    receivers = (
        sample_receivers("el-local", n, min(peers, n - 1), k, g) if n > 1 else torch.zeros(k, 1, 0, dtype=torch.long)
    )
    delivered = torch.rand(receivers.shape, generator=g) >= drop if drop else None
    x = torch.randn(n, sum(sizes), generator=g, dtype=dtype)
    return x, receivers, delivered, frag


def _both(x, receivers, delivered, frag, strategy="auto"):
    a, b = x.clone(), x.clone()
    mix_received_(a, receivers, delivered, frag, backend="torch")
    fused.mix_received_fused_(b, receivers, delivered, frag.assignment, strategy)
    return a, b


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=4),
    k=st.integers(1, 40),
    kind=st.sampled_from(["random", "contiguous", "layer"]),
    peers=st.integers(1, 4),
    drop=st.sampled_from([0.0, 0.3, 1.0]),
    strategy=st.sampled_from(["tiles", "sorted"]),
    seed=st.integers(0, 2**16),
)
def test_fused_is_bit_identical_to_torch(n, sizes, k, kind, peers, drop, strategy, seed):
    k = min(k, sum(sizes)) if kind != "layer" else min(k, len(sizes))
    x, receivers, delivered, frag = _round(n, sizes, k, kind, peers, drop, seed)
    a, b = _both(x, receivers, delivered, frag, strategy)
    assert torch.equal(a, b)


@pytest.mark.parametrize("strategy", ["tiles", "sorted"])
@pytest.mark.parametrize(("n", "d", "k"), [(16, 70_000, 8), (64, 9_000, 64), (300, 2_000, 1024)])
def test_fused_many_tiles_and_runs(n, d, k, strategy):
    """Sizes spanning many tiles (1 MiB each) and fragments far smaller than a tile, with lost messages."""
    x, receivers, delivered, frag = _round(n, [d], k, "random", 3, 0.2, seed=n + k)
    assert d > fused.tile_width(n, 4) or k > fused.tile_width(n, 4)
    a, b = _both(x, receivers, delivered, frag, strategy)
    assert torch.equal(a, b)


def test_fused_float64_noncontiguous_and_nan_isolation():
    x, receivers, delivered, frag = _round(12, [50, 31], 4, "random", 3, 0.0, seed=3, dtype=torch.float64)
    a, b = _both(x, receivers, delivered, frag)
    assert torch.equal(a, b)
    # a non-contiguous (n, d) view (a column slice of a wider buffer) is mixed in place
    wide = torch.randn(12, 100, dtype=torch.float64)
    view = wide[:, 10:91]
    expected = view.clone()
    mix_received_(expected, receivers, delivered, frag, backend="torch")
    fused.mix_received_fused_(view, receivers, delivered, frag.assignment)
    assert torch.equal(view, expected)
    # a NaN node whose messages are all undelivered reaches nobody
    x = torch.randn(12, 81, dtype=torch.float64)
    x[5] = float("nan")
    delivered = torch.ones_like(receivers, dtype=torch.bool)
    delivered[:, 5] = False
    fused.mix_received_fused_(x, receivers, delivered, frag.assignment)
    assert torch.isnan(x[5]).all() and torch.isfinite(x[torch.arange(12) != 5]).all()


def test_protocol_uses_fused_on_cpu_and_results_match_torch_backend(monkeypatch):
    """FragmentGossip's index kernel goes through the fused backend on CPU (from the threshold on, lowered here to
    keep the test small); 30 rounds equal the torch backend's."""
    x = torch.randn(40, 3_000, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(mixing, "FUSED_MIN_VALUES", x.numel())
    assert default_backend(x) == "fused"
    gossip = FragmentGossip([3_000], 40, fragments=8, peers=3, kernel="index", seed=4)
    reference = FragmentGossip([3_000], 40, fragments=8, peers=3, kernel="index", seed=4)
    ws = x.new_empty(workspace_size(40, reference.fragmentation))
    y, z = x.clone(), x.clone()
    for _ in range(30):
        gossip.round_(y)
        receivers, delivered, _ = reference.next_graphs()
        mix_received_(z, receivers, delivered, reference.fragmentation, ws, backend="torch")
    assert torch.equal(y, z)


def test_the_workspace_is_sized_for_the_backend_and_layout_that_run():
    """Only what runs is allocated: nothing for the fused "tiles" layout, n d for "sorted", the accumulators for the
    torch backend; ``backend=None`` covers them all. A round with each exact size gives the same values."""
    from lightning_mosaic.gossip import fused
    from lightning_mosaic.gossip.fragmentation import make_fragmentation

    frag = make_fragmentation([3_000], 8, "random", seed=0)
    n, d = 40, 3_000
    assert fused.default_strategy(n, 8) == "tiles" and fused.default_strategy(n, 1024) == "sorted"
    assert workspace_size(n, frag, "fused") == 0
    torch_size = workspace_size(n, frag, "torch")
    assert (n * 8 + 1) * (d // 8) <= torch_size <= (2 * n + 1) * d
    assert workspace_size(n, frag) == max(torch_size, n * d)
    assert workspace_size(n, make_fragmentation([3_000], 1024, "random", seed=0), "fused") == n * d
    with pytest.raises(ValueError, match="backend must be None, 'fused' or 'torch', got 'auto'"):
        workspace_size(n, frag, "auto")
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    results = []
    for backend in ("fused", "torch"):
        gossip = FragmentGossip([d], n, fragments=8, peers=3, kernel="index", seed=4)
        receivers, delivered, _ = gossip.next_graphs()
        ws = x.new_empty(workspace_size(n, frag, backend))
        results.append(mix_received_(x.clone(), receivers, delivered, gossip.fragmentation, ws, backend=backend))
    assert torch.equal(*results)


def test_backend_errors_name_the_argument():
    x, receivers, delivered, frag = _round(4, [10], 2, "random", 1, 0.0, seed=0)
    with pytest.raises(ValueError, match="backend must be one of .* got 'numba'"):
        mix_received_(x, receivers, delivered, frag, backend="numba")
    with pytest.raises(ValueError, match=r"backend='fused' needs float32/float64 .* got torch.float16"):
        mix_received_(x.half(), receivers, delivered, frag, backend="fused")
    with pytest.raises(ValueError, match="strategy must be one of .* got 'rows'"):
        fused.mix_received_fused_(x, receivers, delivered, frag.assignment, "rows")
    assert default_backend(x.half()) == "torch"


def test_default_strategy_follows_run_length():
    assert fused.default_strategy(16, 8) == "tiles"  # 16,384 columns per tile: 2,048 per fragment
    assert fused.default_strategy(1024, 8) == "sorted"  # 256 columns per tile: 32 per fragment
    assert fused.tile_width(16, 4) * 16 * 4 == fused.TILE_BYTES


def test_auto_backend_is_fused_from_the_threshold_on(monkeypatch):
    """``backend="auto"`` runs the torch backend below :data:`FUSED_MIN_VALUES` values per round (the quickstart's
    16 x 4,810) and the fused one from there on (CPU float32/float64); the results are the same either way."""
    n = 16
    d = -(-FUSED_MIN_VALUES // n)  # the smallest d with n * d >= the threshold
    assert n * 4_810 < FUSED_MIN_VALUES
    assert default_backend(torch.empty(n, d - 1)) == "torch"
    assert default_backend(torch.empty(n, d)) == "fused"
    assert default_backend(torch.empty(n, d, dtype=torch.float64)) == "fused"
    assert default_backend(torch.empty(n, d, dtype=torch.bfloat16)) == "torch"
    assert default_backend(torch.empty(1, FUSED_MIN_VALUES)) == "fused"  # the count of values, whatever the shape
    calls = []
    run_fused = fused.mix_received_fused_
    monkeypatch.setattr(fused, "mix_received_fused_", lambda *args: calls.append(args[0].shape) or run_fused(*args))
    for columns in (d - 1, d):
        x, receivers, delivered, frag = _round(n, [columns], 8, "random", 3, 0.1, seed=columns)
        expected = x.clone()
        mix_received_(expected, receivers, delivered, frag, backend="torch")
        mix_received_(x, receivers, delivered, frag)  # auto
        assert torch.equal(x, expected)
    assert calls == [(n, d)]
    # an explicit "fused" runs at any size
    x, receivers, delivered, frag = _round(4, [10], 2, "random", 1, 0.0, seed=0)
    mix_received_(x, receivers, delivered, frag, backend="fused")
    assert calls == [(n, d), (4, 10)]
