"""Consensus distance over rounds of a quadratic system under Mosaic gossip: Monte Carlo with confidence intervals.

The quantity of Mosaic Learning's figure 3 (arXiv 2602.04352, n = 50 nodes, d = 16 parameters): the consensus
distance (1/n) sum_i ||x_i - x_bar||^2 after every round of X_{t+1} = Mix_{K,t}(X_t - eta grad F(X_t)), as a
function of the number of fragments K. Each Monte Carlo run is one seed: its own fragmentation and graph stream
(``FragmentGossip(seed=seed)``, the library's protocol) and its own initial parameters; the same seed gives the same
initial parameters for every K (common random numbers, so differences between K are not initialisation noise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats

from lightning_mosaic._validation import check_int, check_probability
from lightning_mosaic.analysis.systems import QuadraticSystem
from lightning_mosaic.gossip.metrics import consensus_distance
from lightning_mosaic.gossip.protocol import FragmentGossip


def initial_parameters(system: QuadraticSystem, seed: int, scale: float = 1.0) -> torch.Tensor:
    """``(n, d)`` float64 initial disagreement: i.i.d. N(0, scale^2) from ``numpy.random.default_rng([seed, 1])``,
    minus its node average (every column sums to 0).

    Centred because float64 resolves ||x_i - x_bar||^2 only down to about 1e-32 ||x||^2: a common component that
    decays slower than the disagreement (the consensus part decays like (I - eta A)^t, nearly 1 along A's smallest
    eigenvalue) puts a roundoff floor under the consensus distance. With a shared curvature the disagreement
    evolves independently of the consensus part, so centring changes nothing else. EL-Local mixing (row-stochastic
    only) still moves the node average, so the floor comes back later (measured at n = 50, d = 16: about 1e-35
    after 54 rounds, from 15.6 at round 0); keep ``rounds`` short enough that the curves stay well above it (the
    shipped configuration uses 30 rounds, ending above 1e-20).
    """
    rng = np.random.default_rng([int(seed), 1])
    x = scale * rng.standard_normal((system.num_nodes, system.dim))
    return torch.from_numpy(x - x.mean(axis=0, keepdims=True))


def consensus_curves(
    system: QuadraticSystem,
    fragments: int,
    rounds: int,
    seeds: Sequence[int],
    *,
    peers: int | str,
    topology: str = "el-local",
    fragmentation: str = "random",
    init_scale: float = 1.0,
    topology_options: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Consensus distance of ``system`` before the first round and after each of ``rounds`` rounds, per seed.

    Args:
        system: The quadratic system (n, d, curvature, optima, step size).
        fragments: K in [1, d].
        rounds: Number of rounds T >= 1.
        seeds: One Monte Carlo run per seed (>= 0).
        peers: s or ``"all"``, as in :class:`~lightning_mosaic.gossip.FragmentGossip`.
        topology: One of :data:`~lightning_mosaic.gossip.ALL_TOPOLOGIES`.
        fragmentation: ``"random"`` or ``"contiguous"``.
        init_scale: Standard deviation of the initial parameters (:func:`initial_parameters`).
        topology_options: Keyword arguments of ``FragmentGossip`` for fixed graphs (``degree``, ``graph``,
            ``shape``, ``directed``, ``weights``, ``allow_disconnected``).

    Returns:
        ``(len(seeds), T + 1)`` float64 array (squared parameter units).

    Raises:
        ValueError: For arguments outside these ranges (from the checks here or ``FragmentGossip``).
    """
    check_int("rounds", rounds, 1)
    if not seeds:
        raise ValueError("seeds must name at least one seed, got an empty list")
    out = np.empty((len(seeds), rounds + 1))
    for row, seed in enumerate(seeds):
        gossip = FragmentGossip(
            [system.dim], system.num_nodes, fragments, peers, topology, fragmentation, seed=int(seed),
            **(topology_options or {}),
        )  # fmt: skip
        params = initial_parameters(system, seed, init_scale)
        out[row, 0] = float(consensus_distance(params))
        for t in range(1, rounds + 1):
            params = system.local_step(params)
            gossip.round_(params)
            out[row, t] = float(consensus_distance(params))
    return out


def mean_confidence_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, ...]:
    """Mean over axis 0 and its Student-t confidence interval.

    Args:
        samples: ``(R, ...)`` array of R >= 2 independent runs.
        confidence: Level in (0, 1).

    Returns:
        ``(mean, low, high)``, each of shape ``samples.shape[1:]``.

    Raises:
        ValueError: If there are fewer than 2 runs or ``confidence`` is not in (0, 1).
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim < 1 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 runs for a confidence interval, got shape {x.shape}")
    if check_probability("confidence", confidence) in (0.0, 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    mean = x.mean(axis=0)
    half = stats.t.ppf(0.5 + confidence / 2, df=x.shape[0] - 1) * x.std(axis=0, ddof=1) / np.sqrt(x.shape[0])
    return mean, mean - half, mean + half


def mean_decay_rate(
    curves: np.ndarray, start: int, stop: int, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Per-round decay factor of the mean consensus distance, (mean_stop / mean_start)^(1 / (stop - start)).

    The expected consensus distance decays like rho(S)^t (S the second-moment operator, see
    :mod:`~lightning_mosaic.analysis.spectra`) when all nodes share one optimum (heterogeneity 0), so this is its
    Monte Carlo counterpart. The interval is a percentile bootstrap over the runs (``resamples`` resamples drawn from
    ``numpy.random.default_rng(seed)``).

    Args:
        curves: ``(R, T + 1)`` consensus distances (:func:`consensus_curves`).
        start: First round, 0 <= start < stop.
        stop: Last round, <= T.

    Returns:
        ``(rate, low, high)``.

    Raises:
        ValueError: If the rounds are out of range.
    """
    x = np.asarray(curves, dtype=np.float64)
    if not 0 <= start < stop < x.shape[1]:
        raise ValueError(f"need 0 <= start < stop <= {x.shape[1] - 1} (rounds), got start={start}, stop={stop}")
    check_int("resamples", resamples, 1)

    def rate(rows: np.ndarray) -> np.ndarray:
        return (rows[..., stop].mean(axis=-1) / rows[..., start].mean(axis=-1)) ** (1.0 / (stop - start))

    picks = np.random.default_rng(seed).integers(0, x.shape[0], size=(resamples, x.shape[0]))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(rate(x[picks]), [tail, 100 - tail])  # x[picks]: (resamples, R, T + 1)
    return float(rate(x)), float(low), float(high)
