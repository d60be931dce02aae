"""Figures (PNG, matplotlib) in the style of Mosaic Learning's figures 2 and 3, and the CSV of every number drawn.

Every file is written to a temporary name in the output directory and moved into place (``os.replace``), so a
reader never sees a half-written file and an interrupted run leaves the previous file intact.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lightning_mosaic.analysis.consensus import mean_confidence_interval  # noqa: E402
from lightning_mosaic.analysis.sweep import SweepResult  # noqa: E402


def _atomic(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_csv(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Write ``rows`` (dicts with the same keys) as CSV, atomically. Returns the path."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    fields = list(rows[0])

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    return _atomic(Path(path), write)


def save_figure(figure: plt.Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save ``figure`` as PNG atomically and close it. Returns the path."""
    try:
        return _atomic(Path(path), lambda tmp: figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(figure)


def _positive(values: Sequence[float]) -> np.ndarray:
    """Interval bounds for a log axis: a lower bound <= 0 (few runs) is not drawn (NaN); the CSV keeps it."""
    x = np.asarray(values, dtype=np.float64)
    return np.where(x > 0, x, np.nan)


def _systems(rows: Sequence[Mapping]) -> list[tuple[str, float]]:
    seen: dict[tuple[str, float], None] = {}
    for row in rows:
        seen[(row["curvature"], row["correlation"])] = None
    return list(seen)


def _grid(count: int, rows: int = 1) -> tuple[plt.Figure, np.ndarray]:
    figure, axes = plt.subplots(rows, count, figsize=(3.4 * count, 3.0 * rows), squeeze=False)
    return figure, axes


def _interval_bars(ax: plt.Axes, x: np.ndarray, rows: Sequence[Mapping], key: str, fmt: str, label: str) -> None:
    """Error bars of ``rows[i][key]`` between ``rows[i][key + '_low']`` and ``rows[i][key + '_high']``."""
    value = np.array([r[key] for r in rows])
    low = np.array([r[key + "_low"] for r in rows])
    high = np.array([r[key + "_high"] for r in rows])
    ax.errorbar(x, value, yerr=[value - low, high - value], fmt=fmt, capsize=3, label=label)


def plot_spectra(result: SweepResult, path: str | os.PathLike, confidence: float = 0.95) -> Path:
    """Figure 2 style: per system, lambda_max(M_t^T M_t) over draws per K (box plot, top row), and the mean-square
    rates (second-moment spectral radius, and the Monte Carlo decay rate of the mean consensus distance; bottom row).
    """
    systems = _systems(result.summary)
    figure, axes = _grid(len(systems), rows=2)
    for col, (curvature, correlation) in enumerate(systems):
        summary = [r for r in result.summary if (r["curvature"], r["correlation"]) == (curvature, correlation)]
        ks = [r["fragments"] for r in summary]
        top, bottom = axes[0, col], axes[1, col]
        samples = [
            [
                e["lambda_max"]
                for e in result.eigenvalues
                if (e["curvature"], e["correlation"], e["fragments"]) == (curvature, correlation, k)
            ]
            for k in ks
        ]
        top.boxplot(samples, tick_labels=[str(k) for k in ks], showfliers=False)
        mean_gram = [r["lambda_max_of_mean_gram"] for r in summary]  # exact (shared curvature), else sampled
        if not np.isfinite(mean_gram).all():
            mean_gram = [r["lambda_max_of_mean_gram_sampled"] for r in summary]
        top.plot(
            range(1, len(ks) + 1),
            mean_gram,
            "s--",
            color="tab:gray",
            label=r"$\lambda_{max}(E[M^T M])$",
        )
        top.set_title(f"{curvature}, $\\rho$ = {correlation:g}", fontsize=9)
        top.set_xlabel("fragments K")
        if col == 0:
            top.set_ylabel(r"$\lambda_{max}(M_t^T M_t)$ per draw")
            top.legend(fontsize=7)
        x = np.arange(len(ks))
        if np.isfinite([r["second_moment_radius"] for r in summary]).all():
            _interval_bars(bottom, x, summary, "second_moment_radius", "o-", r"$\rho(E[M_t \otimes M_t])$")
        _interval_bars(bottom, x + 0.08, summary, "consensus_decay_rate", "x", "decay of mean consensus (MC)")
        bottom.set_xticks(x, [str(k) for k in ks])
        bottom.set_xlabel("fragments K")
        if col == 0:
            bottom.set_ylabel(f"mean-square rate per round ({confidence:.0%} CI)")
            bottom.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_consensus(result: SweepResult, path: str | os.PathLike, confidence: float = 0.95) -> Path:
    """Figure 3 style: per system, the mean consensus distance over rounds for each K with its confidence band."""
    systems = _systems(result.consensus)
    figure, axes = _grid(len(systems))
    for col, (curvature, correlation) in enumerate(systems):
        ax = axes[0, col]
        rows = [r for r in result.consensus if (r["curvature"], r["correlation"]) == (curvature, correlation)]
        for k in dict.fromkeys(r["fragments"] for r in rows):
            mine = [r for r in rows if r["fragments"] == k]
            t = [r["round"] for r in mine]
            (line,) = ax.plot(t, [r["mean"] for r in mine], label=f"K = {k}")
            ax.fill_between(
                t, _positive([r["low"] for r in mine]), [r["high"] for r in mine], color=line.get_color(), alpha=0.2
            )
        ax.set_yscale("log")
        ax.set_title(f"{curvature}, $\\rho$ = {correlation:g}", fontsize=9)
        ax.set_xlabel("round")
        if col == 0:
            ax.set_ylabel(f"consensus distance (mean, {confidence:.0%} CI)")
            ax.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path)


def training_rows(logs: Mapping[str, tuple[np.ndarray, np.ndarray]], confidence: float = 0.95) -> list[dict]:
    """Rows (label, round, runs, mean, low, high) of training consensus curves; one run: low = high = mean.

    Args:
        logs: label -> ``(rounds (T,), values (R, T))`` (:func:`~lightning_mosaic.analysis.logs.stack_consensus_logs`).
    """
    rows = []
    for label, (rounds, values) in logs.items():
        if values.shape[0] > 1:
            mean, low, high = mean_confidence_interval(values, confidence)
        else:
            mean = low = high = values[0]
        rows += [
            {
                "label": label,
                "round": float(r),
                "runs": values.shape[0],
                "mean": float(m),
                "low": float(lo),
                "high": float(hi),
            }
            for r, m, lo, hi in zip(rounds, mean, low, high)
        ]
    return rows


def plot_training_consensus(rows: Sequence[Mapping], path: str | os.PathLike, title: str = "") -> Path:
    """The consensus distance measured in training (``gossip/consensus_distance``) per label, mean and interval."""
    figure, ax = plt.subplots(figsize=(6.4, 3.6))
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == label]
        t = [r["round"] for r in mine]
        (line,) = ax.plot(
            t,
            [r["mean"] for r in mine],
            label=f"{label} ({mine[0]['runs']} run{'s' * (mine[0]['runs'] > 1)})",
            linewidth=0.8,
        )
        if mine[0]["runs"] > 1:
            ax.fill_between(
                t, _positive([r["low"] for r in mine]), [r["high"] for r in mine], color=line.get_color(), alpha=0.2
            )
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("consensus distance in training")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path)
