"""The analysis of quadratic systems as a function of the number of fragments K (paper figures 2 and 3).

For every system (curvature kind, correlation) and every K: the per-draw lambda_max(M_t^T M_t) on the disagreement
subspace and lambda_max(E[M_t^T M_t]) (:func:`~lightning_mosaic.analysis.spectra.gram_spectrum`), the second-moment
spectral radius (:func:`~lightning_mosaic.analysis.spectra.second_moment_radius`) and the Monte Carlo consensus
distance over rounds with its decay rate (:mod:`~lightning_mosaic.analysis.consensus`). Returns plain rows (dicts)
that :mod:`~lightning_mosaic.analysis.plots` draws and writes as CSV.

Every topology of :data:`~lightning_mosaic.gossip.ALL_TOPOLOGIES` is accepted, with the fixed-graph options of
:class:`~lightning_mosaic.gossip.FragmentGossip`. The second-moment radius and lambda_max(E[M^T M]) come from the
reduced operator on the node-exchangeable EL topologies only; on fixed graphs they are exact where the rounds draw
nothing, a Monte Carlo estimate or NaN with the reason otherwise (:func:`~lightning_mosaic.analysis.spectra.
topology_methods`); every summary row says which method produced them.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lightning_mosaic._validation import check_int
from lightning_mosaic.analysis.consensus import consensus_curves, mean_confidence_interval, mean_decay_rate
from lightning_mosaic.analysis.spectra import (
    EXACT_DETERMINISTIC,
    MONTE_CARLO,
    REDUCED,
    MixingMoments,
    deterministic_moments,
    gram_moment,
    gram_spectrum,
    mean_gram_largest,
    mixing_moments,
    second_moment_radius,
    topology_methods,
)
from lightning_mosaic.analysis.systems import CURVATURES, make_system
from lightning_mosaic.gossip.graphs import check_topology
from lightning_mosaic.gossip.protocol import FragmentGossip


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
        summary: One row per (system, K): means and intervals of lambda_max(M^T M), lambda_max(E[M^T M]) (with
            its standard error, 0 when exact), the second-moment radius (mean over the seeds' fragmentations, and
            graphs where the graph is drawn from the seed; low / high: the extreme bounds over them of beta's
            interval, so they also cover the spread between fragmentations), the method that produced each of the
            two (``*_method``: :func:`~lightning_mosaic.analysis.spectra.topology_methods`) and, for a NaN, the
            reason (``not_available_reason``), the Monte Carlo decay rate of the mean consensus distance over the
            second half of the rounds, and the final consensus distance.
        consensus: One row per (system, K, round): mean consensus distance and its interval.
        moments: The topology and its options, the spectral gap of one fragment's (expected) mixing matrix
            (``FragmentGossip.spectral_gap`` at seed ``seed``; min / max over the Monte Carlo seeds, which differ
            where the graph is drawn from the seed), alpha and beta (and beta's standard error) of the EL topologies
            (``None`` on fixed graphs), lambda_max(E[W~^T W~]) where it is estimated by Monte Carlo, and
            ``methods``: the method of the radius and of the mean Gram for a shared curvature, with the reason
            where one is not available.
    """

    eigenvalues: list[dict] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    consensus: list[dict] = field(default_factory=list)
    moments: dict = field(default_factory=dict)


def validate_sweep(
    systems: Sequence[SystemSpec],
    fragments: Sequence[int],
    num_nodes: int,
    dim: int,
    peers: int | str,
    topology: str,
    *,
    seeds: Sequence[int] = (0,),
    fragmentation: str = "random",
    topology_options: Mapping[str, Any] | None = None,
) -> list[FragmentGossip]:
    """Check a sweep's arguments before any work, building the one-fragment protocol of every seed.

    Args:
        systems, fragments, num_nodes, dim, peers, topology: As in :func:`run_sweep`.
        seeds: The run seeds whose protocols are built (a graph drawn from the seed, ``regular``, is checked for
            each: e.g. connected).
        fragmentation: ``"random"`` or ``"contiguous"``.
        topology_options: Keyword arguments of :class:`~lightning_mosaic.gossip.FragmentGossip` for fixed graphs
            (``degree``, ``graph``, ``shape``, ``directed``, ``weights``, ``allow_disconnected``).

    Returns:
        ``FragmentGossip([dim], num_nodes, 1, peers, topology, fragmentation, seed=s, **topology_options)`` for
        every seed s.

    Raises:
        ValueError: Naming the first bad argument: an empty list, an unknown curvature, a correlation outside [0, 1),
            a K outside [1, d], an unknown topology or fragmentation, or any (topology, n, s, option) that
            ``FragmentGossip`` refuses (the run's errors: ``peers`` above a degree, a disconnected graph, a bad
            edge-list line, a torus shape that does not give n, ...).
    """
    check_int("dim (d)", dim, 1)
    check_topology(topology)
    if fragmentation not in ("random", "contiguous"):
        raise ValueError(f"fragmentation must be 'random' or 'contiguous', got {fragmentation!r}")
    if peers != "all":
        check_int("peers (s)", peers, 1)
    options = dict(topology_options or {})
    protocols = [
        FragmentGossip([dim], num_nodes, 1, peers, topology, fragmentation, seed=int(s), **options) for s in seeds
    ]
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
    return protocols


@dataclass(frozen=True)
class _Settings:
    num_nodes: int
    dim: int
    peers: int | str
    topology: str
    topology_options: dict[str, Any]
    fragmentation: str
    step_size: float
    heterogeneity: float
    draws: int
    seeds: int
    rounds: int
    confidence: float
    seed: int
    gram: tuple[float, float] = (float("nan"), float("nan"))
    """Monte Carlo lambda_max(E[W~^T W~]) and its standard error (peers sampled on a fixed graph only)."""


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
        FragmentGossip(
            [st.dim], st.num_nodes, k, st.peers, st.topology, st.fragmentation, seed=s, **st.topology_options
        )
        for s in run_seeds
    ]
    radius_method, gram_method, reason = topology_methods(protocols[0], system.shared)
    nan = float("nan")
    radius = radius_low = radius_high = mean_gram = nan
    mean_gram_stderr = nan
    if radius_method == REDUCED:  # one radius per fragmentation (seed), each with beta's interval
        radii = np.array([second_moment_radius(system, p.fragmentation, moments, st.confidence) for p in protocols])
        radius, radius_low, radius_high = radii[:, 0].mean(), radii[:, 1].min(), radii[:, 2].max()
    elif radius_method == EXACT_DETERMINISTIC:  # exact per (graph, fragmentation) of each seed
        exact = np.array([deterministic_moments(system, p) for p in protocols])
        radius, radius_low, radius_high = exact[:, 0].mean(), exact[:, 0].min(), exact[:, 0].max()
        mean_gram, mean_gram_stderr = float(exact[:, 1].mean()), 0.0
    if gram_method == REDUCED:
        mean_gram = mean_gram_largest(system, moments)
        mean_gram_stderr = mean_gram_largest(system, moments.beta_stderr)
    elif gram_method == MONTE_CARLO:
        mean_gram = mean_gram_largest(system, st.gram[0])
        mean_gram_stderr = mean_gram_largest(system, st.gram[1])
    spectrum = gram_spectrum(system, protocols[: st.draws], 1 + (st.draws - 1) // len(run_seeds))
    base = {"curvature": spec.curvature, "correlation": spec.correlation, "fragments": k}
    largest = spectrum.largest[: st.draws]
    out = SweepResult()
    out.eigenvalues = [{**base, "draw": r, "lambda_max": float(v)} for r, v in enumerate(largest)]
    lam_mean, lam_low, lam_high = mean_confidence_interval(largest, st.confidence)
    curves = consensus_curves(
        system, k, st.rounds, run_seeds, peers=st.peers, topology=st.topology, fragmentation=st.fragmentation,
        topology_options=st.topology_options,
    )  # fmt: skip
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
            "lambda_max_of_mean_gram": float(mean_gram),
            "lambda_max_of_mean_gram_stderr": float(mean_gram_stderr),
            "lambda_max_of_mean_gram_method": gram_method,
            "lambda_max_of_mean_gram_sampled": spectrum.largest_of_mean,
            "second_moment_radius": float(radius),
            "second_moment_radius_low": float(radius_low),
            "second_moment_radius_high": float(radius_high),
            "second_moment_radius_method": radius_method,
            "not_available_reason": reason,
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
    peers: int | str,
    topology: str = "el-local",
    fragmentation: str = "random",
    degree: int | None = None,
    graph: str | None = None,
    shape: tuple[int, int] | None = None,
    directed: bool = False,
    weights: str | None = None,
    allow_disconnected: bool = False,
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
        peers: s, or ``"all"`` (every neighbour of a fixed graph: D-PSGD with K = 1).
        topology: One of :data:`~lightning_mosaic.gossip.ALL_TOPOLOGIES` (``docs/topologies.md``).
        fragmentation: ``"random"`` or ``"contiguous"``.
        degree: Degree of ``topology="regular"`` (default: ``peers``).
        graph: Edge-list file of ``topology="file"``.
        shape: ``(a, b)``, a * b = n, of ``topology="torus"``.
        directed: Whether the edges of ``graph`` are directed.
        weights: ``"metropolis-hastings"`` or ``"uniform"`` on a fixed graph used whole (``None``: the default).
        allow_disconnected: Accept a fixed graph with several connected components, or a directed one with several
            groups of nodes that hear no other group.
        step_size: eta.
        heterogeneity: zeta, scale of the per-node optima (0: one shared optimum).
        draws: Rounds sampled for lambda_max(M_t^T M_t), per (system, K): the first round of the protocols of seeds
            ``seed, seed + 1, ...`` (their own fragmentations), more rounds of each when ``draws`` > ``seeds``.
        seeds: Monte Carlo runs of the consensus distance, per (system, K) (seeds ``seed .. seed + seeds - 1``).
        rounds: Rounds per Monte Carlo run.
        moment_draws: EL-Local matrices averaged for beta (unused for EL-Oracle, where beta is exact), or rounds
            averaged for lambda_max(E[W~^T W~]) with peers sampled on a fixed graph (unused elsewhere).
        confidence: Level of every interval.
        seed: Base seed of everything random.
        workers: Processes analysing (system, K) pairs in parallel; every pair seeds itself, so the result does not
            depend on ``workers``.

    Returns:
        The :class:`SweepResult`.

    Raises:
        ValueError: See :func:`validate_sweep`; ``seeds`` < 2, ``workers`` < 1.
    """
    check_int("seeds", seeds, 2)
    check_int("workers", workers, 1)
    check_int("seed", seed, 0)
    options = {
        "degree": degree, "graph": graph, "shape": None if shape is None else (int(shape[0]), int(shape[1])),
        "directed": bool(directed), "weights": weights, "allow_disconnected": bool(allow_disconnected),
    }  # fmt: skip
    run_seeds = range(seed, seed + seeds)
    protocols = validate_sweep(
        systems, fragments, num_nodes, dim, peers, topology, seeds=run_seeds, fragmentation=fragmentation,
        topology_options=options,
    )  # fmt: skip
    radius_method, gram_method, reason = topology_methods(protocols[0])
    gram = (float("nan"), float("nan"))
    with one_torch_thread():
        if protocols[0].graph is None:
            moments = mixing_moments(topology, num_nodes, peers, moment_draws, seed)
        else:
            moments = MixingMoments(float("nan"), float("nan"), float("nan"))
            if gram_method == MONTE_CARLO:
                value, stderr, used = gram_moment(protocols, moment_draws)
                gram = (value, stderr)
        gaps = [p.spectral_gap() for p in protocols]
    settings = _Settings(
        num_nodes, dim, peers, topology, options, fragmentation, step_size, heterogeneity, draws, seeds, rounds,
        confidence, seed, gram,
    )  # fmt: skip
    tasks = [(spec, k) for spec in systems for k in fragments]
    if workers == 1:
        parts = [_analyse(spec, k, settings, moments) for spec, k in tasks]
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_analyse, *zip(*tasks), [settings] * len(tasks), [moments] * len(tasks)))
    exchangeable = protocols[0].graph is None
    record = {
        "topology": topology, "peers": peers, **options, "fragmentation": fragmentation,
        "weights_name": protocols[0].weights_name, "sampled": protocols[0].sampled,
        "spectral_gap": gaps[0], "spectral_gap_min": min(gaps), "spectral_gap_max": max(gaps),
        "alpha": moments.alpha if exchangeable else None, "beta": moments.beta if exchangeable else None,
        "beta_stderr": moments.beta_stderr if exchangeable else None,
        "beta_draws": moments.draws if exchangeable else 0,
        "gram_largest": None if gram_method != MONTE_CARLO else gram[0],
        "gram_largest_stderr": None if gram_method != MONTE_CARLO else gram[1],
        "gram_largest_draws": used if gram_method == MONTE_CARLO else 0,
        "methods": {"second_moment_radius": radius_method, "lambda_max_of_mean_gram": gram_method,
                    "not_available_reason": reason,
                    "note": "for a shared curvature; spectra_summary.csv gives the method of every row (with "
                            "random-per-node curvature neither applies)"},
    }  # fmt: skip
    result = SweepResult(moments=record)
    for part in parts:
        result.eigenvalues += part.eigenvalues
        result.summary += part.summary
        result.consensus += part.consensus
    return result
