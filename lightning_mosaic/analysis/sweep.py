"""The analysis of quadratic systems as a function of the number of fragments K (paper figures 2 and 3).

For every system (curvature kind, correlation) and every K: the per-draw lambda_max(M_t^T M_t) on the disagreement
subspace and lambda_max(E[M_t^T M_t]) (:func:`~lightning_mosaic.analysis.spectra.gram_spectrum`), the second-moment
spectral radius (:func:`~lightning_mosaic.analysis.spectra.second_moment_radius`) and the Monte Carlo consensus
distance over rounds with its decay rate (:mod:`~lightning_mosaic.analysis.consensus`). Returns plain rows (dicts)
that :mod:`~lightning_mosaic.analysis.plots` draws and writes as CSV.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from lightning_mosaic._validation import check_int
from lightning_mosaic.analysis.consensus import consensus_curves, mean_confidence_interval, mean_decay_rate
from lightning_mosaic.analysis.spectra import (
    MixingMoments,
    gram_spectrum,
    mean_gram_largest,
    mixing_moments,
    second_moment_radius,
)
from lightning_mosaic.analysis.systems import CURVATURES, make_system
from lightning_mosaic.gossip.protocol import FragmentGossip
from lightning_mosaic.gossip.topology import validate_topology


@dataclass(frozen=True)
class SystemSpec:
    """One analysed system: its curvature kind and parameter correlation (see ``make_system``)."""

    curvature: str = "equicorrelated"
    correlation: float = 0.5

    @property
    def label(self) -> str:
        return f"{self.curvature}, rho = {self.correlation:g}"


@dataclass
class SweepResult:
    """Every number the figures show, as rows.

    Attributes:
        eigenvalues: One row per (system, K, draw): lambda_max(M_t^T M_t).
        summary: One row per (system, K): means and intervals of lambda_max(M^T M), lambda_max(E[M^T M]), the
            second-moment radius (mean over the seeds' fragmentations; low / high: the extreme bounds over them of
            beta's interval, so they also cover the spread between fragmentations), the Monte Carlo decay rate of
            the mean consensus distance over the second half of the rounds, and the final consensus distance.
        consensus: One row per (system, K, round): mean consensus distance and its interval.
        moments: alpha, beta (and beta's standard error) of one fragment's mixing matrix.
    """

    eigenvalues: list[dict] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    consensus: list[dict] = field(default_factory=list)
    moments: dict = field(default_factory=dict)


def validate_sweep(
    systems: Sequence[SystemSpec], fragments: Sequence[int], num_nodes: int, dim: int, peers: int, topology: str
) -> None:
    """Check a sweep's arguments before any work.

    Raises:
        ValueError: Naming the first bad argument: an empty list, an unknown curvature, a correlation outside [0, 1),
            a K outside [1, d], or an impossible (topology, n, s).
    """
    check_int("dim (d)", dim, 1)
    validate_topology(topology, num_nodes, peers)
    if not systems:
        raise ValueError("systems must list at least one system, got an empty list")
    if not fragments:
        raise ValueError("fragments must list at least one K, got an empty list")
    for spec in systems:
        if spec.curvature not in CURVATURES:
            raise ValueError(f"systems: curvature must be one of {CURVATURES}, got {spec.curvature!r}")
        if not 0.0 <= spec.correlation < 1.0:
            raise ValueError(f"systems: correlation must be in [0, 1), got {spec.correlation!r}")
    for k in fragments:
        check_int("fragments (K)", k, 1, dim, hint=f" (at most d = {dim})")


@dataclass(frozen=True)
class _Settings:
    num_nodes: int
    dim: int
    peers: int
    topology: str
    fragmentation: str
    step_size: float
    heterogeneity: float
    draws: int
    seeds: int
    rounds: int
    confidence: float
    seed: int


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block, restoring the thread count after.

    The analysis is made of many small products ((n, n) by (n, d_k), 256 x 256 eigenproblems); on the shared
    2-core test machine torch's intra-op threads made it 3 times slower (cProfile of one (system, K) at n = 50,
    d = 16: 21.9 s with the default threads, 7.5 s with one).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _analyse(spec: SystemSpec, k: int, settings: _Settings, moments: MixingMoments) -> SweepResult:
    """Everything for one (system, K); deterministic given the settings (own seeds), so tasks can run anywhere."""
    with one_torch_thread():
        return _analyse_pair(spec, k, settings, moments)


def _analyse_pair(spec: SystemSpec, k: int, settings: _Settings, moments: MixingMoments) -> SweepResult:
    st = settings
    system = make_system(
        st.num_nodes, st.dim, spec.correlation, spec.curvature, step_size=st.step_size,
        heterogeneity=st.heterogeneity, seed=st.seed,
    )  # fmt: skip
    run_seeds = list(range(st.seed, st.seed + st.seeds))
    protocols = [
        FragmentGossip([st.dim], st.num_nodes, k, st.peers, st.topology, st.fragmentation, seed=s) for s in run_seeds
    ]
    spectrum = gram_spectrum(system, protocols[: st.draws], 1 + (st.draws - 1) // len(run_seeds))
    base = {"curvature": spec.curvature, "correlation": spec.correlation, "fragments": k}
    largest = spectrum.largest[: st.draws]
    out = SweepResult()
    out.eigenvalues = [{**base, "draw": r, "lambda_max": float(v)} for r, v in enumerate(largest)]
    lam_mean, lam_low, lam_high = mean_confidence_interval(largest, st.confidence)
    if system.shared:  # one radius per fragmentation (seed), each with beta's interval
        radii = np.array([second_moment_radius(system, p.fragmentation, moments, st.confidence) for p in protocols])
        radius, radius_low, radius_high = radii[:, 0].mean(), radii[:, 1].min(), radii[:, 2].max()
    else:
        radius = radius_low = radius_high = float("nan")
    curves = consensus_curves(
        system, k, st.rounds, run_seeds, peers=st.peers, topology=st.topology, fragmentation=st.fragmentation
    )
    mean, low, high = mean_confidence_interval(curves, st.confidence)
    out.consensus = [
        {**base, "round": t, "mean": float(mean[t]), "low": float(low[t]), "high": float(high[t])}
        for t in range(st.rounds + 1)
    ]
    decay_start, decay_stop = st.rounds // 2, st.rounds
    rate, rate_low, rate_high = mean_decay_rate(curves, decay_start, decay_stop, st.confidence, seed=st.seed)
    out.summary = [
        {
            **base,
            "draws": st.draws,
            "lambda_max_mean": float(lam_mean),
            "lambda_max_low": float(lam_low),
            "lambda_max_high": float(lam_high),
            "lambda_max_median": float(np.median(largest)),
            "lambda_max_of_mean_gram": mean_gram_largest(system, moments) if system.shared else float("nan"),
            "lambda_max_of_mean_gram_sampled": spectrum.largest_of_mean,
            "second_moment_radius": float(radius),
            "second_moment_radius_low": float(radius_low),
            "second_moment_radius_high": float(radius_high),
            "seeds": st.seeds,
            "decay_rounds": f"{decay_start}-{decay_stop}",
            "consensus_decay_rate": rate,
            "consensus_decay_rate_low": rate_low,
            "consensus_decay_rate_high": rate_high,
            "consensus_final_mean": float(mean[-1]),
            "consensus_final_low": float(low[-1]),
            "consensus_final_high": float(high[-1]),
        }
    ]
    return out


def run_sweep(
    systems: Sequence[SystemSpec],
    fragments: Sequence[int],
    *,
    num_nodes: int,
    dim: int,
    peers: int,
    topology: str = "el-local",
    fragmentation: str = "random",
    step_size: float = 0.5,
    heterogeneity: float = 0.0,
    draws: int = 50,
    seeds: int = 32,
    rounds: int = 60,
    moment_draws: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
    workers: int = 1,
) -> SweepResult:
    """Analyse every system for every K.

    Args:
        systems: The systems (curvature kind, correlation).
        fragments: The values of K.
        num_nodes: n.
        dim: d.
        peers: s.
        topology: ``"el-local"`` or ``"el-oracle"``.
        fragmentation: ``"random"`` or ``"contiguous"``.
        step_size: eta.
        heterogeneity: zeta, scale of the per-node optima (0: one shared optimum).
        draws: Rounds sampled for lambda_max(M_t^T M_t), per (system, K): the first round of the protocols of seeds
            ``seed, seed + 1, ...`` (their own fragmentations), more rounds of each when ``draws`` > ``seeds``.
        seeds: Monte Carlo runs of the consensus distance, per (system, K) (seeds ``seed .. seed + seeds - 1``).
        rounds: Rounds per Monte Carlo run.
        moment_draws: EL-Local matrices averaged for beta (unused for EL-Oracle, where beta is exact).
        confidence: Level of every interval.
        seed: Base seed of everything random.
        workers: Processes analysing (system, K) pairs in parallel; every pair seeds itself, so the result does not
            depend on ``workers``.

    Returns:
        The :class:`SweepResult`.
    """
    validate_sweep(systems, fragments, num_nodes, dim, peers, topology)
    check_int("seeds", seeds, 2)
    check_int("workers", workers, 1)
    with one_torch_thread():
        moments = mixing_moments(topology, num_nodes, peers, moment_draws, seed)
    settings = _Settings(
        num_nodes, dim, peers, topology, fragmentation, step_size, heterogeneity, draws, seeds, rounds, confidence,
        seed,
    )  # fmt: skip
    tasks = [(spec, k) for spec in systems for k in fragments]
    if workers == 1:
        parts = [_analyse(spec, k, settings, moments) for spec, k in tasks]
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_analyse, *zip(*tasks), [settings] * len(tasks), [moments] * len(tasks)))
    result = SweepResult(
        moments={"alpha": moments.alpha, "beta": moments.beta, "beta_stderr": moments.beta_stderr,
                 "beta_draws": moments.draws}
    )  # fmt: skip
    for part in parts:
        result.eigenvalues += part.eigenvalues
        result.summary += part.summary
        result.consensus += part.consensus
    return result
