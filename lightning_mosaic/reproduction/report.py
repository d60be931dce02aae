"""Aggregate a grid of runs (one per K and seed) into curves over rounds, a Markdown table and PNG plots.

Pure numpy + matplotlib over the runs' CSV logs (``metrics.csv`` of Lightning's ``CSVLogger``) and their
``summary.json``; no Lightning import. Every file is written to a temporary name and moved.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

CLASSIFICATION_CURVES = {
    "val/node_acc_mean": "node-average test accuracy",
    "val/avg_model_acc": "averaged-model test accuracy",
    "gossip/consensus_distance": "consensus distance",
    "val/node_acc_std": "std of node test accuracy",
}
RATING_CURVES = {
    "val/node_rmse_mean": "node-average test RMSE",
    "val/avg_model_rmse": "averaged-model test RMSE",
    "gossip/consensus_distance": "consensus distance",
    "val/node_rmse_std": "std of node test RMSE",
}
SUMMARY_KEYS = {
    "classification": ("node_acc_mean", "node_acc_std", "avg_model_acc", "consensus_distance"),
    "rating": ("node_rmse_mean", "node_rmse_std", "avg_model_rmse", "consensus_distance"),
}


def read_curves(metrics_csv: Path, names: Sequence[str]) -> dict[str, dict[int, float]]:
    """``{metric: {round: value}}`` for ``names`` from a CSVLogger ``metrics.csv`` (missing cells skipped).

    Lightning writes a value logged after optimizer step t (``trainer.global_step == t``) with ``step = t - 1``;
    with one gossip round per step, the round is ``step + 1`` (``gossip/round`` confirms it)."""
    curves: dict[str, dict[int, float]] = {name: {} for name in names}
    with Path(metrics_csv).open(newline="") as handle:
        for row in csv.DictReader(handle):
            for name in names:
                if row.get(name):
                    curves[name][int(row["step"]) + 1] = float(row[name])
    return curves


def aggregate(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of per-seed values."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(runs: Mapping[tuple[int, int], Path], directory: Path, task: str, title: str, command: str) -> Path:
    """Write ``report.md``, ``curves.csv`` and one PNG per curve into ``directory``.

    Args:
        runs: ``{(K, seed): run directory}``; each holds ``metrics.csv`` and ``summary.json``.
        directory: Output folder (created).
        task: ``"classification"`` or ``"rating"`` (which metrics are reported).
        title: First line of the report.
        command: The command that produced it, quoted in the report.

    Returns:
        The path of ``report.md``.

    Raises:
        ValueError: If ``runs`` is empty or ``task`` is unknown.
    """
    if not runs:
        raise ValueError("runs is empty: nothing to report")
    if task not in SUMMARY_KEYS:
        raise ValueError(f"task must be one of {tuple(SUMMARY_KEYS)}, got {task!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    curve_names = CLASSIFICATION_CURVES if task == "classification" else RATING_CURVES
    fragments = sorted({k for k, _ in runs})
    seeds = sorted({s for _, s in runs})
    per_k: dict[int, dict[str, dict[int, list[float]]]] = {k: defaultdict(lambda: defaultdict(list)) for k in fragments}
    finals: dict[int, dict[str, list[float]]] = {k: defaultdict(list) for k in fragments}
    for (k, _seed), run in sorted(runs.items()):
        merged: dict[str, dict[int, float]] = defaultdict(dict)
        for log in sorted(run.glob("metrics*.csv")):  # metrics.part*.csv: before a resume
            for name, curve in read_curves(log, list(curve_names)).items():
                merged[name].update(curve)
        for name, curve in merged.items():
            for step, value in curve.items():
                per_k[k][name][step].append(value)
        summary = json.loads((run / "summary.json").read_text())
        for key in SUMMARY_KEYS[task]:
            if summary.get(key) is not None:
                finals[k][key].append(float(summary[key]))

    rows = ["metric,fragments,round,mean,std,seeds"]
    for name, label in curve_names.items():
        figure, axes = plt.subplots(figsize=(6, 4))
        for k in fragments:
            steps = sorted(step for step, values in per_k[k][name].items() if len(values) == len(seeds))
            if not steps:
                continue
            stats = np.array([aggregate(per_k[k][name][step]) for step in steps])
            rows += [f"{name},{k},{s},{m:.6g},{sd:.6g},{len(seeds)}" for s, (m, sd) in zip(steps, stats)]
            label_k = "EL (K = 1)" if k == 1 else f"Mosaic K = {k}"
            axes.plot(steps, stats[:, 0], label=label_k)
            axes.fill_between(steps, stats[:, 0] - stats[:, 1], stats[:, 0] + stats[:, 1], alpha=0.2)
        axes.set_xlabel("round")
        axes.set_ylabel(label)
        if name == "gossip/consensus_distance":
            axes.set_yscale("log")
        axes.set_title(f"{label} (mean ± std over {len(seeds)} seed(s))")
        axes.legend()
        figure.tight_layout()
        png = directory / (name.split("/")[1] + ".png")
        tmp = png.with_name(png.stem + ".tmp.png")
        figure.savefig(tmp, dpi=100)
        plt.close(figure)
        os.replace(tmp, png)
    _write_atomic(directory / "curves.csv", "\n".join(rows) + "\n")

    keys = SUMMARY_KEYS[task]
    baseline = {key: aggregate(finals[1][key])[0] for key in keys if finals.get(1, {}).get(key)} if 1 in finals else {}
    header = "| K | " + " | ".join(keys) + " | " + " | ".join(f"{key} − EL" for key in keys[:1] + keys[2:3]) + " |"
    lines = [f"# {title}", "", f"Command: `{command}`", "", f"Seeds: {seeds}; mean ± std over seeds, final round.", ""]
    lines += [header, "|" + "---|" * (1 + len(keys) + 2)]
    for k in fragments:
        cells = []
        for key in keys:
            mean, std = aggregate(finals[k][key]) if finals[k][key] else (float("nan"), 0.0)
            cells.append(f"{mean:.4g} ± {std:.2g}")
        diffs = []
        for key in keys[:1] + keys[2:3]:
            if key in baseline and finals[k][key]:
                diffs.append(f"{aggregate(finals[k][key])[0] - baseline[key]:+.4f}")
            else:
                diffs.append("—")
        name = "1 (EL)" if k == 1 else str(k)
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
    lines += ["", "Plots: " + ", ".join(f"`{n.split('/')[1]}.png`" for n in curve_names) + "; numbers: `curves.csv`."]
    report = directory / "report.md"
    _write_atomic(report, "\n".join(lines) + "\n")
    return report
