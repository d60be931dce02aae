"""``mosaic analyze``: the spectral and consensus analysis of quadratic systems (paper figures 2 and 3) and the
consensus distance measured in training, as PNG figures and CSV files.

``mosaic analyze --config analysis/paper_fig2_fig3 --output_dir analysis``. The arguments are those of
:func:`analyze` (jsonargparse reads their types and docstrings; ``--help`` lists them, ``--print_config`` prints a
YAML to start from). No Lightning import: this runs on the pure numerical code of :mod:`lightning_mosaic.analysis`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Literal

from jsonargparse import ActionConfigFile, ArgumentParser

from lightning_mosaic._validation import check_int, check_probability
from lightning_mosaic.analysis.sweep import SystemSpec, validate_sweep
from lightning_mosaic.help_format import MosaicHelpFormatter

OUTPUTS = {
    "spectra_png": "fig2_spectra.png",
    "consensus_png": "fig3_consensus.png",
    "eigenvalues_csv": "eigenvalues.csv",
    "summary_csv": "spectra_summary.csv",
    "consensus_csv": "consensus.csv",
    "training_png": "training_consensus.png",
    "training_csv": "training_consensus.csv",
    "moments_json": "mixing_moments.json",
}
"""File names written into ``output_dir``."""


def analyze(
    output_dir: str = "analysis",
    systems: list[SystemSpec] | None = None,
    fragments: list[int] | None = None,
    num_nodes: int = 50,
    dim: int = 16,
    peers: int | Literal["all"] = 3,
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
    draws: int = 64,
    seeds: int = 32,
    rounds: int = 60,
    moment_draws: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
    workers: int = 1,
    training_logs: dict[str, list[str]] | None = None,
    training_title: str = "",
) -> dict[str, str]:
    """Analyse quadratic systems as a function of K and/or plot training consensus curves; write PNG + CSV.

    Any topology of the run (docs/topologies.md), with the same options and the same errors. ``mixing_moments.json``
    records the topology, the spectral gap of one fragment's (expected) mixing matrix and which method produced the
    second-moment radius and lambda_max(E[M^T M]) (``reduced-operator``, ``exact-deterministic``, ``monte-carlo``
    or ``not-available`` with the reason); ``spectra_summary.csv`` gives them per row.

    Args:
        output_dir: Directory for the figures and CSV files (created; files replaced atomically).
        systems: The systems to analyse: curvature (``equicorrelated``, ``random``, ``random-per-node``) and
            correlation rho in [0, 1). Default: equicorrelated with rho = 0 and 0.9, random with rho = 0.9. An
            empty list skips the analysis (only training logs are plotted).
        fragments: Values of K, each in [1, dim]. Default: 1, 2, 4, 8, 16.
        num_nodes: n, nodes.
        dim: d, parameters per node.
        peers: s, peers per fragment per round, or ``all`` (every neighbour of a fixed graph: D-PSGD with K = 1).
        topology: ``el-local``, ``el-oracle`` or a fixed graph: ``ring``, ``torus``, ``regular``, ``exponential``,
            ``one-peer-exponential``, ``complete``, ``file`` (docs/topologies.md). The second-moment radius and
            lambda_max(E[M^T M]) come from the reduced operator on the EL topologies; on a fixed graph they are
            exact where the rounds draw nothing (a graph used whole, one-peer exponential), otherwise (peers
            sampled among the neighbours) the radius is NaN with the reason and the mean Gram a Monte Carlo
            estimate with its standard error; ``*_method`` columns and ``mixing_moments.json`` say which.
        fragmentation: ``random`` or ``contiguous``.
        degree: Degree of ``topology: regular`` (default: ``peers``).
        graph: Edge-list file of ``topology: file`` (one ``u v`` pair of node ids per line, ``#`` comments).
        shape: ``[a, b]`` with a * b = n for ``topology: torus`` (default: the most square factorization).
        directed: Whether the edges of ``graph`` are directed (u sends to v).
        weights: ``metropolis-hastings`` (default) or ``uniform`` on a fixed graph used whole.
        allow_disconnected: Accept a fixed graph with several connected components, or a directed one with several
            groups of nodes that hear no other group.
        step_size: eta in (0, 2), local gradient step (curvatures have largest eigenvalue 1).
        heterogeneity: zeta >= 0, scale of the per-node optima (0: shared optimum, consensus decays to 0).
        draws: Rounds sampled for lambda_max(M_t^T M_t) per (system, K).
        seeds: Monte Carlo runs (>= 2) of the consensus distance per (system, K).
        rounds: Rounds per Monte Carlo run.
        moment_draws: EL-Local mixing matrices averaged for the second moment beta, or rounds averaged for
            lambda_max(E[W~^T W~]) with peers sampled on a fixed graph.
        confidence: Level of every interval, in (0, 1).
        seed: Base seed of everything random.
        workers: Processes analysing (system, K) pairs in parallel (the numbers do not depend on it).
        training_logs: label -> list of ``metrics.csv`` files written by ``mosaic fit`` (one per seed), plotted as
            the consensus distance measured in training.
        training_title: Title of the training figure.

    Returns:
        Name -> path of every file written.

    Raises:
        ValueError: For any bad argument, before any work or write (the topology and its options are checked by
            building the protocol of every seed, so the errors are the run's).
        FileNotFoundError: For a missing training log, before any work or write.
    """
    systems = (
        [SystemSpec("equicorrelated", 0.0), SystemSpec("equicorrelated", 0.9), SystemSpec("random", 0.9)]
        if systems is None
        else systems
    )
    fragments = [1, 2, 4, 8, 16] if fragments is None else fragments
    training_logs = training_logs or {}
    if not systems and not training_logs:
        raise ValueError("nothing to do: systems is empty and no training_logs are given")
    graph_options = {
        "degree": degree, "graph": graph, "shape": shape, "directed": directed, "weights": weights,
        "allow_disconnected": allow_disconnected,
    }  # fmt: skip
    if systems:
        for name, value, low in (
            ("draws", draws, 1),
            ("seeds", seeds, 2),
            ("rounds", rounds, 2),
            ("seed", seed, 0),
            ("workers", workers, 1),
        ):
            check_int(name, value, low)
        options = {**graph_options, "shape": None if shape is None else tuple(shape)}
        (protocol, *_) = validate_sweep(
            systems, fragments, num_nodes, dim, peers, topology, seeds=range(seed, seed + seeds),
            fragmentation=fragmentation, topology_options=options,
        )  # fmt: skip
        from lightning_mosaic.analysis.systems import make_system

        make_system(num_nodes, dim, 0.0, step_size=step_size, heterogeneity=heterogeneity)  # checks eta and zeta
        if topology == "el-local" or (protocol.graph is not None and protocol.sampled):
            check_int("moment_draws", moment_draws, 2)
    if check_probability("confidence", confidence) in (0.0, 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    from lightning_mosaic.analysis.logs import stack_consensus_logs

    logs = {label: stack_consensus_logs(paths) for label, paths in training_logs.items()}  # reads: fails before writes

    from lightning_mosaic.analysis import plots
    from lightning_mosaic.analysis.sweep import run_sweep

    out = Path(output_dir)
    written: dict[str, str] = {}
    if systems:
        start = time.perf_counter()
        result = run_sweep(
            systems, fragments, num_nodes=num_nodes, dim=dim, peers=peers, topology=topology,
            fragmentation=fragmentation, **graph_options, step_size=step_size, heterogeneity=heterogeneity,
            draws=draws, seeds=seeds, rounds=rounds, moment_draws=moment_draws, confidence=confidence, seed=seed,
            workers=workers,
        )  # fmt: skip
        written["eigenvalues_csv"] = plots.write_csv(result.eigenvalues, out / OUTPUTS["eigenvalues_csv"])
        written["summary_csv"] = plots.write_csv(result.summary, out / OUTPUTS["summary_csv"])
        written["consensus_csv"] = plots.write_csv(result.consensus, out / OUTPUTS["consensus_csv"])
        written["spectra_png"] = plots.plot_spectra(result, out / OUTPUTS["spectra_png"], confidence)
        written["consensus_png"] = plots.plot_consensus(result, out / OUTPUTS["consensus_png"], confidence)
        moments = {**result.moments, "seconds": round(time.perf_counter() - start, 1)}
        written["moments_json"] = plots._atomic(
            out / OUTPUTS["moments_json"], lambda tmp: Path(tmp).write_text(json.dumps(moments, indent=2) + "\n")
        )
        print(_format_summary(result.summary), flush=True)
    if logs:
        rows = plots.training_rows(logs, confidence)
        written["training_csv"] = plots.write_csv(rows, out / OUTPUTS["training_csv"])
        written["training_png"] = plots.plot_training_consensus(rows, out / OUTPUTS["training_png"], training_title)
    for path in written.values():
        print(f"wrote {path}", flush=True)
    return {name: str(path) for name, path in written.items()}


def _interval(row: dict, key: str, value_suffix: str = "") -> str:
    return f"{row[key + value_suffix]:.4f} [{row[key + '_low']:.4f}, {row[key + '_high']:.4f}]"


def _format_summary(rows: list[dict]) -> str:
    header = (
        f"{'system':<26} {'K':>3} {'lambda_max(M^T M) mean [CI]':>30} {'rho(E[M(x)M]) [CI]':>28} {'MC decay [CI]':>26}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        system = f"{r['curvature']}, rho={r['correlation']:g}"
        lam = _interval(r, "lambda_max", "_mean")
        rad, dec = _interval(r, "second_moment_radius"), _interval(r, "consensus_decay_rate")
        lines.append(f"{system:<26} {r['fragments']:>3} {lam:>30} {rad:>28} {dec:>26}")
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    """The ``mosaic analyze`` parser: the arguments of :func:`analyze` plus ``--config`` (YAML)."""
    parser = ArgumentParser(
        prog="mosaic analyze",
        description="Spectra and consensus of Mosaic Learning on quadratic systems (paper figures 2 and 3), and "
        "consensus distance measured in training; writes PNG figures and CSV files.",
        exit_on_error=False,
        formatter_class=MosaicHelpFormatter,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
    parser.add_function_arguments(analyze, as_group=False)
    return parser


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> dict[str, str]:
    """Entry point of ``mosaic analyze`` (``argv`` without the ``analyze`` word).

    Bad input (unknown option, wrong type, out-of-range value, missing file) prints one line,
    ``mosaic: error: ...``, and exits with status 2 before anything is written; ``MOSAIC_TRACEBACK=1`` raises instead.
    """
    parser = build_parser()
    try:
        config = parser.instantiate(parser.parse_args(sys.argv[1:] if argv is None else argv))
        return analyze(**{key: value for key, value in vars(config).items() if key != "config"})
    except Exception as error:  # jsonargparse's ArgumentError, or the library's ValueError / FileNotFoundError
        from jsonargparse import ArgumentError

        if not isinstance(error, (ArgumentError, ValueError, TypeError, FileNotFoundError)):
            raise
        if os.environ.get("MOSAIC_TRACEBACK") == "1":
            raise
        print(f"mosaic: error: {_one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
