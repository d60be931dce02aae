"""Spectral and consensus analysis of Mosaic Learning (paper figures 2 and 3). Pure numpy/torch, no Lightning.

- :mod:`.systems`: quadratic systems X_{t+1} = Mix_{K,t}(X_t - eta grad F(X_t)) and their round operator M_t.
- :mod:`.spectra`: lambda_max(M_t^T M_t) on the disagreement subspace, and the second-moment spectral radius
  (reduced on the EL topologies, exact on fixed rounds; :func:`topology_methods` says which applies).
- :mod:`.consensus`: Monte Carlo consensus distance over rounds, with confidence intervals.
- :mod:`.logs`: the consensus distance measured in training (``metrics.csv`` of ``mosaic fit``).
- :mod:`.sweep`: all of the above as a function of K; :mod:`.plots`: figures and CSV; :mod:`.cli`: ``mosaic analyze``.
"""

from lightning_mosaic.analysis.consensus import consensus_curves, mean_confidence_interval, mean_decay_rate
from lightning_mosaic.analysis.logs import read_consensus_log, stack_consensus_logs
from lightning_mosaic.analysis.spectra import (
    GramSpectrum,
    MixingMoments,
    deterministic_moments,
    exact_alpha,
    gram_moment,
    gram_spectrum,
    mixing_moments,
    moments_from_matrices,
    second_moment_operator,
    second_moment_operator_dense,
    second_moment_radius,
    spectral_radius,
    topology_methods,
)
from lightning_mosaic.analysis.sweep import SweepResult, SystemSpec, run_sweep
from lightning_mosaic.analysis.systems import (
    CURVATURES,
    QuadraticSystem,
    curvature_matrix,
    disagreement_basis,
    make_system,
)

__all__ = [
    "CURVATURES",
    "GramSpectrum",
    "MixingMoments",
    "QuadraticSystem",
    "SweepResult",
    "SystemSpec",
    "consensus_curves",
    "curvature_matrix",
    "deterministic_moments",
    "disagreement_basis",
    "exact_alpha",
    "gram_moment",
    "gram_spectrum",
    "make_system",
    "mean_confidence_interval",
    "mean_decay_rate",
    "mixing_moments",
    "moments_from_matrices",
    "read_consensus_log",
    "run_sweep",
    "second_moment_operator",
    "second_moment_operator_dense",
    "second_moment_radius",
    "spectral_radius",
    "stack_consensus_logs",
    "topology_methods",
]
