"""Dense (``(K, n, n)`` matrices) and index (receiver lists) mixing kernels, and the O(K n s) samplers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_mosaic.gossip import (
    FragmentGossip,
    default_kernel,
    dense_draw,
    el_local_receivers,
    make_fragmentation,
    mix_received_,
    random_regular_neighbours,
    receivers_to_adjacency,
)
from lightning_mosaic.gossip.topology import DENSE_DRAW_LIMIT, el_local_receivers_sparse

SETTINGS = settings(max_examples=30, deadline=None)


def run_both(n, sizes, rounds, x, offline=None, **kwargs):
    """Run the same seeded protocol with both kernels; return the two results."""
    out = []
    for kernel in ("dense", "index"):
        gossip = FragmentGossip(sizes, n, kernel=kernel, **kwargs)
        y = x.clone()
        for _ in range(rounds):
            gossip.round_(y, offline)
        out.append(y)
    return out


@SETTINGS
@given(
    n=st.integers(2, 12),
    d=st.integers(1, 30),
    data=st.data(),
    topology=st.sampled_from(["el-local", "el-oracle"]),
    kind=st.sampled_from(["random", "contiguous", "layer"]),
    drop_prob=st.sampled_from([0.0, 0.3, 1.0]),
    seed=st.integers(0, 2**31),
)
def test_index_kernel_equals_dense_kernel_with_drops_and_offline_nodes(n, d, data, topology, kind, drop_prob, seed):
    s = data.draw(st.integers(1, n - 1).filter(lambda s: topology == "el-local" or n * s % 2 == 0))
    sizes = [d] if kind != "layer" else [d, 3, 5]
    k = data.draw(st.integers(1, 3 if kind == "layer" else d))
    offline = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    x = torch.randn(n, sum(sizes), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x[offline] = float("nan")  # isolated NaN nodes must never touch anyone
    kwargs = dict(fragments=k, peers=s, topology=topology, fragmentation=kind, seed=seed, drop_prob=drop_prob)
    dense, index = run_both(n, sizes, 3, x, offline, **kwargs)
    torch.testing.assert_close(index, dense, equal_nan=True)
    assert torch.isfinite(index[~offline]).all()
    assert torch.isnan(index[offline]).all()


@pytest.mark.parametrize("topology", ["el-local", "el-oracle"])
def test_kernels_agree_above_the_dense_draw_limit(topology):
    """n = 260, K = 63: graphs and drops come from the O(K n s) draws; both kernels still use the same ones."""
    n, k, s, d = 260, 63, 4, 128
    assert not dense_draw(n, k)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    offline = torch.zeros(n, dtype=torch.bool)
    offline[[5, 77]] = True
    x[5] = float("nan")
    kwargs = dict(fragments=k, peers=s, topology=topology, seed=1, drop_prob=0.2)
    dense, index = run_both(n, [d], 2, x, offline, **kwargs)
    torch.testing.assert_close(index, dense, equal_nan=True)
    assert torch.equal(index[77], x[77]) and torch.isnan(index[5]).all()
    assert torch.isfinite(index[~offline]).all()


def test_small_draws_keep_the_dense_score_stream():
    """Where dense_draw holds, receivers are the s smallest of torch.rand(K, n, n) scores (the original stream)."""
    n, s, k = 9, 3, 4
    scores = torch.rand(k, n, n, generator=torch.Generator().manual_seed(3))
    scores.diagonal(dim1=1, dim2=2).fill_(2.0)
    expected = scores.topk(s, dim=2, largest=False).indices
    assert torch.equal(el_local_receivers(n, s, k, torch.Generator().manual_seed(3)), expected)
    assert dense_draw(n, k) and not dense_draw(2049, 1)
    assert DENSE_DRAW_LIMIT == 1 << 22


@SETTINGS
@given(n=st.integers(2, 40), data=st.data(), seed=st.integers(0, 2**31))
def test_floyd_sampler_draws_s_distinct_other_peers(n, data, seed):
    s = data.draw(st.integers(1, n - 1))
    receivers = el_local_receivers_sparse(n, s, 3, torch.Generator().manual_seed(seed))
    assert receivers.shape == (3, n, s)
    adjacency = receivers_to_adjacency(receivers)
    assert torch.all(adjacency.diagonal(dim1=1, dim2=2) == 0)
    assert torch.all(adjacency.sum(dim=1) == s)  # s distinct receivers per sender
    assert set(adjacency.unique().tolist()) <= {0.0, 1.0}


def test_floyd_sampler_is_uniform_over_subsets():
    """Every one of the C(5, 2) = 10 peer pairs of a sender among 6 nodes is drawn equally often (chi-square)."""
    n, s, draws = 6, 2, 20000
    receivers = el_local_receivers_sparse(n, s, draws, torch.Generator().manual_seed(0))[:, 0]  # sender 0
    pairs = receivers.sort(dim=1).values
    codes = pairs[:, 0] * n + pairs[:, 1]
    counts = torch.bincount(codes, minlength=n * n).double()
    counts = counts[counts > 0]
    assert counts.numel() == 10
    expected = draws / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.9  # 99.9% quantile of chi-square with 9 degrees of freedom


@pytest.mark.parametrize("n,s", [(10, 3), (12, 11), (30, 5)])
def test_regular_neighbours_are_the_regular_graph(n, s):
    neighbours = random_regular_neighbours(n, s, torch.Generator().manual_seed(2))
    adjacency = receivers_to_adjacency(neighbours[None])[0]
    torch.testing.assert_close(adjacency, adjacency.T)
    assert torch.all(adjacency.sum(dim=1) == s) and torch.all(adjacency.diagonal() == 0)
    assert torch.all(neighbours[:, 1:] > neighbours[:, :-1])


def test_mix_received_errors_and_kernel_choice():
    f = make_fragmentation([6], 2, "random")
    x = torch.randn(3, 6)
    receivers = torch.zeros(2, 3, 1, dtype=torch.long)
    assert mix_received_(x, receivers, None, f) is x
    with pytest.raises(ValueError, match="receivers"):
        mix_received_(x, receivers[:1], None, f)
    with pytest.raises(ValueError, match="delivered"):
        mix_received_(x, receivers, torch.ones(2, 3, 2, dtype=torch.bool), f)
    with pytest.raises(ValueError, match="d = 6"):
        mix_received_(torch.randn(3, 7), receivers, None, f)
    with pytest.raises(ValueError, match="kernel"):
        FragmentGossip([6], 3, kernel="sparse")
    assert {default_kernel(n, k) for n in (2, 16, 1024) for k in (1, 8, 64)} == {"index"}
    assert FragmentGossip([6], 3, fragments=2).kernel == default_kernel(3, 2)


@pytest.mark.parametrize("kernel", ["dense", "index"])
def test_mosaic_gossip_kernel_setting_reaches_the_protocol_and_agrees(kernel):
    """``MosaicGossip(kernel=...)`` runs that kernel in a real Trainer; dense and index give the same training to float
    rounding, and the state key (checkpoint compatibility) does not depend on it."""
    from lightning import Trainer

    from lightning_mosaic import MosaicGossip, MosaicModule
    from lightning_mosaic.data import DigitsDataModule
    from lightning_mosaic.models import MLP

    def fit(kernel_name):
        gossip = MosaicGossip(fragments=4, peers=2, seed=1, kernel=kernel_name)
        trainer = Trainer(
            max_steps=6,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            callbacks=[gossip],
        )
        module = MosaicModule(MLP, 8, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
        trainer.fit(module, DigitsDataModule(num_nodes=8, alpha=0.5, batch_size=8))
        return gossip, module.gossip_parameters.detach().clone()

    gossip, params = fit(kernel)
    assert gossip.protocol.kernel == kernel
    reference, expected = fit("auto")
    assert reference.protocol.kernel == "index" and gossip.state_key == reference.state_key
    torch.testing.assert_close(params, expected, rtol=1e-5, atol=1e-6)
