"""Tests of lightning_mosaic.data.partition.dirichlet_partition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_mosaic.data import dirichlet_partition

ALPHAS = [0.01, 0.1, 0.5, 1.0, 10.0, 1000.0, math.inf, "iid", "IID"]

labels_strategy = st.lists(st.integers(0, 9), min_size=1, max_size=400).map(lambda v: np.asarray(v))


def _check_valid(parts: list[np.ndarray], total: int, num_nodes: int, min_samples: int) -> None:
    assert len(parts) == num_nodes
    for part in parts:
        assert part.dtype == np.int64
        assert part.ndim == 1
        assert np.all(np.diff(part) > 0), "each node's indices must be sorted and unique"
        assert len(part) >= min_samples
    everything = np.concatenate(parts)
    assert len(everything) == total, "indices must be disjoint (each assigned exactly once)"
    assert np.array_equal(np.sort(everything), np.arange(total)), "union must be all indices"


@settings(max_examples=150, deadline=None)
@given(
    labels=labels_strategy,
    num_nodes=st.integers(2, 12),
    alpha=st.sampled_from(ALPHAS),
    seed=st.integers(0, 2**32),
    min_samples=st.integers(0, 3),
)
def test_partition_is_disjoint_complete_and_honours_min_samples(labels, num_nodes, alpha, seed, min_samples):
    total = len(labels)
    if min_samples * num_nodes > total:
        with pytest.raises(ValueError, match="min_samples"):
            dirichlet_partition(labels, num_nodes, alpha, seed=seed, min_samples=min_samples)
        return
    try:
        parts = dirichlet_partition(labels, num_nodes, alpha, seed=seed, min_samples=min_samples, max_retries=20)
    except ValueError as exc:  # a very skewed draw can legitimately exhaust its retries
        message = str(exc)
        assert "min_samples" in message and "alpha" in message and "num_nodes" in message
        assert not (alpha in ("iid", "IID") or alpha == math.inf), "IID splits always satisfy min_samples"
        return
    _check_valid(parts, total, num_nodes, min_samples)


@settings(max_examples=60, deadline=None)
@given(labels=labels_strategy, num_nodes=st.integers(2, 12), alpha=st.sampled_from(ALPHAS), seed=st.integers(0, 99))
def test_partition_is_reproducible(labels, num_nodes, alpha, seed):
    first = dirichlet_partition(labels, num_nodes, alpha, seed=seed, min_samples=0)
    second = dirichlet_partition(labels, num_nodes, alpha, seed=seed, min_samples=0)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("alpha", [0.1, 1.0, "iid"])
def test_different_seeds_give_different_partitions(alpha):
    labels = np.repeat(np.arange(10), 100)
    partitions = {tuple(tuple(p.tolist()) for p in dirichlet_partition(labels, 10, alpha, seed=s)) for s in range(20)}
    assert len(partitions) == 20


def test_partition_does_not_touch_global_numpy_rng():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    dirichlet_partition(np.repeat(np.arange(5), 20), 4, 0.5, seed=0)
    assert np.array_equal(np.random.get_state()[1], before)


@settings(max_examples=100, deadline=None)
@given(labels=labels_strategy, num_nodes=st.integers(2, 20), seed=st.integers(0, 2**32))
def test_iid_sizes_differ_by_at_most_one(labels, num_nodes, seed):
    sizes = [len(p) for p in dirichlet_partition(labels, num_nodes, "iid", seed=seed, min_samples=0)]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == len(labels)
    assert sizes == [len(p) for p in dirichlet_partition(labels, num_nodes, math.inf, seed=seed, min_samples=0)]


def _label_stats(labels: np.ndarray, parts: list[np.ndarray]) -> tuple[float, float]:
    """Mean number of distinct classes per node, mean share of each node's most frequent class."""
    hist = np.stack([np.bincount(labels[p], minlength=10) for p in parts])
    distinct = (hist > 0).sum(axis=1).mean()
    top_share = (hist.max(axis=1) / hist.sum(axis=1)).mean()
    return float(distinct), float(top_share)


def test_small_alpha_skews_label_histograms():
    labels = np.repeat(np.arange(10), 500)  # balanced, 5,000 samples
    stats = {}
    for alpha in (0.1, 1.0, 100.0, "iid"):
        runs = [_label_stats(labels, dirichlet_partition(labels, 20, alpha, seed=s)) for s in range(5)]
        stats[alpha] = tuple(np.mean(runs, axis=0))
    # measured on this scheme: alpha=0.1 -> ~5 classes/node and ~60% top-class share; iid -> 10 and ~13%
    assert stats["iid"][0] == 10.0
    assert stats[0.1][0] < 7.0
    assert stats[0.1][1] > 0.45
    assert stats["iid"][1] < 0.2
    assert stats[0.1][1] > stats[1.0][1] > stats[100.0][1]
    assert stats[100.0][0] >= 9.9  # large alpha approaches IID


def test_tiny_alpha_does_not_produce_nan():
    labels = np.repeat(np.arange(3), 50)
    parts = dirichlet_partition(labels, 5, 1e-6, seed=0, min_samples=0)
    _check_valid(parts, 150, 5, 0)


def test_accepts_lists_and_tensors():
    labels = [0, 1, 2, 0, 1, 2, 0, 1]
    expected = dirichlet_partition(np.asarray(labels), 2, 1.0, seed=3)
    for variant in (labels, torch.tensor(labels), np.asarray(labels, dtype=np.int8)):
        got = dirichlet_partition(variant, 2, 1.0, seed=3)
        assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))


def test_min_samples_failure_after_retries_names_everything():
    labels = np.zeros(20, dtype=np.int64)  # one class: tiny alpha puts it (almost) all on one node
    with pytest.raises(ValueError, match=r"min_samples=2.*alpha=0\.001.*num_nodes=10.*larger alpha"):
        dirichlet_partition(labels, 10, 0.001, seed=0, min_samples=2, max_retries=5)


def test_min_samples_retry_can_succeed():
    labels = np.repeat(np.arange(4), 10)
    parts = dirichlet_partition(labels, 8, 0.5, seed=0, min_samples=2, max_retries=1000)
    _check_valid(parts, 40, 8, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_nodes": 1}, "num_nodes"),
        ({"num_nodes": 0}, "num_nodes"),
        ({"num_nodes": 2.5}, "num_nodes"),
        ({"num_nodes": True}, "num_nodes"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"alpha": "dirichlet"}, "alpha"),
        ({"alpha": None}, "alpha"),
        ({"min_samples": -1}, "min_samples"),
        ({"min_samples": 5}, "min_samples"),  # 5 * 4 nodes > 12 samples: impossible, raised at once
        ({"max_retries": -1}, "max_retries"),
        ({"seed": -1}, "seed"),
        ({"labels": np.zeros((3, 4), dtype=int)}, "labels"),
        ({"labels": []}, "labels"),
        ({"labels": [0, -1, 2]}, "labels"),
        ({"labels": [0.5, 1.0]}, "labels"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_the_parameter(kwargs, match):
    args = {"labels": np.repeat(np.arange(3), 4), "num_nodes": 4, "alpha": 0.5}
    args.update(kwargs)
    labels, num_nodes, alpha = args.pop("labels"), args.pop("num_nodes"), args.pop("alpha")
    with pytest.raises(ValueError, match=match):
        dirichlet_partition(labels, num_nodes, alpha, **args)
