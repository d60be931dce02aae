"""Label-skewed (non-IID) partitioning of a labelled dataset across nodes.

The scheme is the standard per-class Dirichlet split used across the federated and decentralized learning
literature: Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification" (arXiv:1909.06335, 2019); FedLab's ``hetero_dir_partition``; flwr-datasets'
``DirichletPartitioner``; and the Epidemic Learning code (decentralizepy) that Mosaic Learning builds on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import numpy as np

from lightning_mosaic._validation import check_int as _check_int

__all__ = ["dirichlet_partition"]

_IID_STRINGS = ("iid", "inf", "infinity")


def _resolve_alpha(alpha: float | str) -> float:
    """Validate ``alpha`` and map the IID spellings to ``math.inf``.

    Raises:
        ValueError: ``alpha`` is not a positive number, ``inf`` or the string ``"iid"``.
    """
    allowed = "a float > 0, or float('inf') / the strings 'iid' or 'inf' for an IID split"
    if isinstance(alpha, str):
        if alpha.strip().lower() in _IID_STRINGS:
            return math.inf
        raise ValueError(f"alpha must be {allowed}; got the string {alpha!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, Real):
        raise ValueError(f"alpha must be {allowed}; got {alpha!r} ({type(alpha).__name__})")
    value = float(alpha)
    if math.isnan(value) or value <= 0:
        raise ValueError(f"alpha must be {allowed}; got {alpha!r}")
    return value


def _check_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Return ``labels`` as a 1-D int64 array or raise ``ValueError`` naming ``labels``."""
    try:
        array = np.asarray(labels)
    except Exception as exc:  # e.g. ragged nested lists
        raise ValueError(f"labels must be a 1-D array-like of non-negative integers; got {labels!r}") from exc
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D with shape (N,); got an array of shape {array.shape}")
    if array.size == 0:
        raise ValueError("labels must be non-empty; got 0 labels")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must hold integers; got dtype {array.dtype}")
    if array.min() < 0:
        raise ValueError(f"labels must be non-negative class indices; got minimum label {int(array.min())}")
    return array.astype(np.int64, copy=False)


def dirichlet_partition(
    labels: Sequence[int] | np.ndarray,
    num_nodes: int,
    alpha: float | str,
    *,
    seed: int = 0,
    min_samples: int = 1,
    max_retries: int = 100,
) -> list[np.ndarray]:
    """Split sample indices across nodes with per-class Dirichlet shares (label-skewed non-IID).

    For every class ``c`` (in increasing label order) the indices ``{j : labels[j] == c}`` are shuffled,
    shares ``p ~ Dirichlet(alpha * ones(num_nodes))`` are drawn, and the shuffled indices are cut into
    ``num_nodes`` consecutive chunks at ``floor(cumsum(p) * count_c)``. Small ``alpha`` (e.g. 0.1) gives each
    node only a few dominant classes; large ``alpha`` approaches an IID split. ``alpha = float('inf')`` or
    ``"iid"`` gives an exactly uniform IID split instead: all indices are shuffled and cut with
    ``np.array_split`` into shards whose sizes differ by at most one.

    If some node ends up with fewer than ``min_samples`` indices, the whole partition is redrawn (continuing
    the same random stream, so the result stays a deterministic function of ``seed``), up to ``max_retries``
    times.

    References: Hsu et al., arXiv:1909.06335 (2019); FedLab ``hetero_dir_partition``; flwr-datasets
    ``DirichletPartitioner`` (without its optional self-balancing).

    Args:
        labels: Integer class label of every sample, shape ``(N,)``, values ``>= 0``. Any array-like works
            (list, NumPy array, CPU tensor).
        num_nodes: Number of nodes ``n >= 2``.
        alpha: Dirichlet concentration, ``> 0``; ``float('inf')`` or the string ``"iid"`` (case-insensitive)
            for a uniform IID split.
        seed: Seed of the private ``np.random.default_rng(seed)``; the global NumPy state is neither used nor
            changed. Same arguments and seed give the same partition.
        min_samples: Minimum number of indices every node must receive, ``>= 0``.
        max_retries: Number of redraws allowed after the first draw when ``min_samples`` is not met, ``>= 0``.

    Returns:
        ``num_nodes`` arrays of dtype int64, each sorted ascending. Node ``i`` owns ``result[i]``; every index
        in ``range(N)`` appears in exactly one array.

    Raises:
        ValueError: ``labels`` is not 1-D, is empty, is not integer or holds a negative value;
            ``num_nodes < 2``; ``alpha`` is ``<= 0``, NaN or an unknown string; ``min_samples < 0``;
            ``max_retries < 0``; ``seed < 0``; ``min_samples * num_nodes > N`` (impossible, raised before
            drawing); or no draw satisfied ``min_samples`` within ``max_retries`` redraws.

    Example:
        >>> parts = dirichlet_partition([0, 0, 1, 1, 2, 2, 2, 2], num_nodes=2, alpha="iid", seed=0)
        >>> sorted(int(i) for p in parts for i in p)
        [0, 1, 2, 3, 4, 5, 6, 7]
    """
    num_nodes = _check_int("num_nodes", num_nodes, 2)
    alpha_value = _resolve_alpha(alpha)
    seed = _check_int("seed", seed, 0)
    min_samples = _check_int("min_samples", min_samples, 0)
    max_retries = _check_int("max_retries", max_retries, 0)
    label_array = _check_labels(labels)
    total = label_array.size
    if min_samples * num_nodes > total:
        raise ValueError(
            f"min_samples={min_samples} is impossible with num_nodes={num_nodes} and only {total} samples: "
            f"min_samples * num_nodes = {min_samples * num_nodes} > {total}; lower min_samples or num_nodes"
        )

    rng = np.random.default_rng(seed)

    if math.isinf(alpha_value):
        shards = np.array_split(rng.permutation(total), num_nodes)
        return [np.sort(shard).astype(np.int64, copy=False) for shard in shards]

    classes = np.unique(label_array)
    class_members = [np.flatnonzero(label_array == c) for c in classes]
    concentration = np.full(num_nodes, alpha_value)
    smallest = 0
    for _attempt in range(max_retries + 1):
        pieces: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
        for members in class_members:
            shuffled = rng.permutation(members)
            shares = rng.dirichlet(concentration)
            if not np.all(np.isfinite(shares)) or shares.sum() <= 0:
                # Tiny alpha can underflow every gamma draw; the alpha -> 0 limit puts the class on one node.
                shares = np.zeros(num_nodes)
                shares[rng.integers(num_nodes)] = 1.0
            cuts = (np.cumsum(shares) * len(shuffled)).astype(np.int64)[:-1]
            for node, chunk in enumerate(np.split(shuffled, cuts)):
                pieces[node].append(chunk)
        shards = [np.sort(np.concatenate(p)).astype(np.int64, copy=False) for p in pieces]
        smallest = min(len(s) for s in shards)
        if smallest >= min_samples:
            return shards

    raise ValueError(
        f"could not give every node at least min_samples={min_samples} samples with alpha={alpha!r} and "
        f"num_nodes={num_nodes} ({total} samples) in {max_retries + 1} draws (max_retries={max_retries}); "
        f"the smallest node of the last draw had {smallest}. Use a larger alpha, a smaller min_samples, "
        f"or fewer nodes (or, calling dirichlet_partition directly, more max_retries)"
    )
