"""Aggregate a grid of runs (one per K and seed) into curves over rounds, a Markdown report and PNG plots.

Pure numpy + matplotlib over what every run left in its folder: the CSV logs (``metrics.csv`` of Lightning's
``CSVLogger``), ``summary.json`` (:class:`~lightning_mosaic.callbacks.MosaicSummary`) and ``config.yaml`` (the
configuration ``LightningCLI`` saved); no Lightning import. Every file is written to a temporary name and moved.

The report states the experiment's setup as the runs recorded it (:func:`describe_setup`), the final metrics per K
with the difference to EL, every number through one formatter (:func:`format_metric`, one format per metric kind),
and plots one curve per K in its own colour, line style and marker (:func:`plot_curves`), so that curves lying on
top of each other can still be told apart.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lightning_mosaic.analysis.consensus import mean_confidence_interval

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

#: How each reported metric is written (:func:`format_metric`): ``"accuracy"`` as a percentage with 2 decimals,
#: ``"error"`` (losses, RMSE, MAE) with 4 decimals, ``"scientific"`` (consensus distance) with 3 significant digits.
METRIC_KINDS = {
    "node_acc_mean": "accuracy",
    "node_acc_std": "accuracy",
    "avg_model_acc": "accuracy",
    "node_rating_acc_mean": "accuracy",
    "node_rmse_mean": "error",
    "node_rmse_std": "error",
    "avg_model_rmse": "error",
    "val_loss": "error",
    "consensus_distance": "scientific",
}

#: Confidence level of the intervals of the report's final metrics (Student t over seeds).
CONFIDENCE = 0.95

#: Line styles and markers of the curves, one pair per K (in increasing K), so that coinciding curves stay visible.
LINE_STYLES: tuple[Any, ...] = (
    "-",
    "--",
    ":",
    "-.",
    (0, (5, 1, 1, 1, 1, 1)),
    (0, (1, 3)),
    (0, (8, 3)),
    (0, (3, 5, 1, 5)),
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

#: Flattened ``config.yaml`` keys that differ between the runs of a grid by design (K, the seeds, the log folder,
#: the checkpoint a resumed run started from); every other differing key is reported.
GRID_KEYS = frozenset(
    {
        "gossip.fragments",
        "seed_everything",
        "gossip.seed",
        "faults.seed",
        "model.init_args.seed",
        "data.init_args.seed",
        "trainer.logger.init_args.save_dir",
        "trainer.logger.init_args.name",
        "trainer.logger.init_args.version",
        "ckpt_path",
    }
)
SEED_KEYS = ("seed_everything", "gossip.seed", "faults.seed", "model.init_args.seed", "data.init_args.seed")
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"


def _round(step: int, final_step: int | None) -> int:
    """The round of a ``metrics.csv`` row logged at ``step`` (see :func:`read_curves`)."""
    return step if final_step is not None and step == final_step else step + 1


def read_curves(metrics_csv: Path, names: Sequence[str], final_step: int | None = None) -> dict[str, dict[int, float]]:
    """``{metric: {round: value}}`` for ``names`` from a CSVLogger ``metrics.csv`` (missing cells skipped).

    Lightning writes a value logged in training or in a validation during fit after optimizer step t
    (``trainer.global_step == t``) with ``step = t - 1``; with one gossip round per step, that is round
    ``step + 1`` (``gossip/round`` confirms it). The validation after fit (``MosaicCLI.after_fit``'s
    ``trainer.validate``, when the last step was not validated) is written with ``step = t``, the run's final step.

    Args:
        metrics_csv: The CSV file.
        names: The metrics (columns) to read.
        final_step: The run's final ``global_step`` (``steps`` of its ``summary.json``): a row with this step is
            the end-of-fit validation, of round ``final_step``; every other row is round ``step + 1``. ``None``:
            every row is ``step + 1`` (a run that has not finished).
    """
    curves: dict[str, dict[int, float]] = {name: {} for name in names}
    with Path(metrics_csv).open(newline="") as handle:
        for row in csv.DictReader(handle):
            for name in names:
                if row.get(name):
                    curves[name][_round(int(row["step"]), final_step)] = float(row[name])
    return curves


def _validations(logs: Sequence[Path], name: str, final_step: int | None) -> tuple[list[int], int | None]:
    """``(rounds validated during fit, round of the end-of-fit validation or None)`` from a run's logs of ``name``.

    The end-of-fit validation is the row at ``final_step`` (:func:`read_curves`); it is ``None`` when that round
    was also validated during fit (a run resumed from its last checkpoint validates it once more).
    """
    during: set[int] = set()
    at_end = None
    for log in logs:
        with Path(log).open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get(name):
                    step = int(row["step"])
                    if final_step is not None and step == final_step:
                        at_end = step
                    else:
                        during.add(step + 1)
    return sorted(during), (None if at_end in during else at_end)


def aggregate(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of per-seed values."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def half_width(values: Sequence[float]) -> float | None:
    """Half-width of the :data:`CONFIDENCE` Student-t interval of the mean of ``values``; ``None`` for one value."""
    if len(values) < 2:
        return None
    mean, _low, high = mean_confidence_interval(np.asarray(values, dtype=np.float64), CONFIDENCE)
    return float(high - mean)


def metric_kind(name: str) -> str:
    """The kind of a reported metric (:data:`METRIC_KINDS`), from its summary key or logged name (``val/...``).

    Raises:
        ValueError: If the metric has no kind.
    """
    key = name.split("/", 1)[-1]
    if key not in METRIC_KINDS:
        raise ValueError(f"metric {name!r} has no number format; known: {sorted(METRIC_KINDS)}")
    return METRIC_KINDS[key]


def format_metric(value: float | None, kind: str, half: float | None = None, *, signed: bool = False) -> str:
    """The one number format of the report: ``value`` (and ``± half``) written for its metric kind.

    Args:
        value: The number (a fraction for ``"accuracy"``); ``None`` or NaN is written ``—``.
        kind: ``"accuracy"`` (``92.71%``: percent, 2 decimals), ``"error"`` (``0.9512``: 4 decimals) or
            ``"scientific"`` (``1.23e-02``: 3 significant digits).
        half: Confidence-interval half-width, written after ``±`` in the same format (unsigned); ``None``: none.
        signed: ``value`` is a difference of two metrics: a ``+`` in front of positive values, and a difference
            of accuracies in percentage points (``+0.81 pp``: 2 decimals), not percent.

    Returns:
        The text of the number (and its half-width).

    Raises:
        ValueError: If ``kind`` is unknown.

    Example:
        >>> format_metric(0.92713, "accuracy", 0.0035), format_metric(0.0081, "accuracy", 0.012, signed=True)
        ('92.71% ± 0.35%', '+0.81 pp ± 1.20 pp')
        >>> format_metric(0.95123, "error", 0.0004), format_metric(0.012604, "scientific", 0.000208)
        ('0.9512 ± 0.0004', '1.26e-02 ± 2.08e-04')
    """
    patterns = {"accuracy": ("{:.2f}%", 100.0), "error": ("{:.4f}", 1.0), "scientific": ("{:.2e}", 1.0)}
    if kind not in patterns:
        raise ValueError(f"kind must be one of {tuple(patterns)}, got {kind!r}")
    pattern, scale = ("{:.2f} pp", 100.0) if signed and kind == "accuracy" else patterns[kind]
    if value is None or not math.isfinite(value):
        return "—"
    text = ("+" if signed and value * scale > 0 else "") + pattern.format(value * scale)
    if half is not None and math.isfinite(half):
        text += " ± " + pattern.format(half * scale)
    return text


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` of a nested dict (lists and scalars are leaves)."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _text(value: Any) -> str:
    """A setting as the report writes it: YAML's spelling of scalars (``null``, ``true``), lists in brackets."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _component(node: Any) -> str:
    """A ``class_path`` / ``init_args`` component as ``Class(arg=value, ...)`` (``none`` when unset)."""
    if not isinstance(node, Mapping) or "class_path" not in node:
        return "none" if node is None else _text(node)
    args = node.get("init_args") or {}
    shown = ", ".join(f"{k}={_text(v)}" for k, v in args.items() if not isinstance(v, Mapping))
    return f"{node['class_path']}({shown})"


def _under(config: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The flattened keys below ``prefix``, named relative to it."""
    return {key.removeprefix(prefix): v for key, v in config.items() if key.startswith(prefix)}


def _run_name(k: int, seed: int) -> str:
    return f"K{k}-seed{seed}"


def _load_run(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(flattened config.yaml, summary.json)`` of a run folder."""
    config = yaml.safe_load((run / CONFIG_FILE).read_text()) or {}
    return _flatten(config), json.loads((run / SUMMARY_FILE).read_text())


def _validation_text(rounds: Sequence[int], at_end: int | None = None) -> str:
    """The rounds validated during fit (``every 10 rounds (rounds 10, 20)``), then the end-of-fit one if any."""
    if not rounds:
        return "none logged" if at_end is None else f"at the end only (round {at_end})"
    gaps = {b - a for a, b in zip(rounds, rounds[1:])}
    shown = ", ".join(str(r) for r in rounds) if len(rounds) <= 6 else f"{rounds[0]}, {rounds[1]}, ..., {rounds[-1]}"
    if len(gaps) == 1 and rounds[0] == next(iter(gaps)):
        text = f"every {rounds[0]} rounds (rounds {shown})"
    elif len(rounds) == 1:
        text = f"at round {shown}"
    else:
        text = f"at rounds {shown}"
    return text if at_end is None else f"{text} and at the end (round {at_end})"


def _setup_rows(
    config: Mapping[str, Any], summary: Mapping[str, Any], validated: Sequence[int], at_end: int | None = None
) -> dict[str, str]:
    """The setup of one run, ``{row label: value}``, from its flattened config and its summary.

    ``validated``: the rounds validated during fit; ``at_end``: the round of the end-of-fit validation, if any.
    """

    def get(key: str, default: Any = None) -> Any:
        return config.get(key, default)

    model = get("model.init_args.model.class_path")
    module = get("model.class_path", "the configured module")
    d = summary.get("parameters_per_node")
    size = f"d = {d:,} parameters per node" if isinstance(d, int) else "d not recorded"
    if model is not None:
        inner = _under(config, "model.init_args.model.init_args.")
        model_text = f"{_component({'class_path': model, 'init_args': inner})} in {module}; {size}"
    else:
        model_text = f"{module}; {size}"
    data_dir = get("data.init_args.data_dir")
    folder = f"data folder `{data_dir}`" if "data.init_args.data_dir" in config else "no data folder (not an argument)"
    alpha = _text(get("data.init_args.alpha")) if "data.init_args.alpha" in config else "not an argument of the data"
    if "data.init_args.node_split" in config:
        alpha += f"; node split {get('data.init_args.node_split')}"
    optimizer = summary.get("optimizer") or {}
    configured = get("model.init_args.optimizer.class_path") or get("optimizer.class_path")
    opt_class = configured or optimizer.get("class") or "not recorded"
    lr = optimizer.get("lr", get("model.init_args.optimizer.init_args.lr", get("optimizer.init_args.lr")))
    others = {key: v for key, v in optimizer.items() if key not in ("class", "lr") and v is not None and v is not False}
    opt_text = opt_class + (" (" + ", ".join(f"{key} {_text(v)}" for key, v in others.items()) + ")" if others else "")
    scheduler_node = get("model.init_args.lr_scheduler.class_path") or get("lr_scheduler.class_path")
    if scheduler_node is None:
        lr_text = f"{_text(lr)}, constant (no LR scheduler)"
    else:
        prefix = "model.init_args.lr_scheduler" if get("model.init_args.lr_scheduler.class_path") else "lr_scheduler"
        args = _under(config, prefix + ".init_args.")
        lr_text = f"{_text(lr)}, scheduled by {_component({'class_path': scheduler_node, 'init_args': args})}"
        lr_text += f" every {get('model.init_args.lr_scheduler_interval', 'step')}"
    examples = summary.get("eval_examples")
    test_text = f"{examples:,} examples per evaluation" if isinstance(examples, int) else "not recorded"
    if get("data.init_args.test_subset") is not None:
        test_text += f" (test_subset {get('data.init_args.test_subset')})"
    test_text += ", the same for every node's model and the averaged model" if isinstance(examples, int) else ""
    validation = _validation_text(validated, at_end)
    settings = [
        f"{key} {_text(get(key))}"
        for key in ("trainer.check_val_every_n_epoch", "trainer.val_check_interval", "data.init_args.steps_per_epoch")
        if key in config
    ]
    if settings:
        validation += "; " + ", ".join(settings)
    faults = summary.get("faults")
    fault_parts = [f"{key} {_text(v)}" for key, v in faults.items() if key != "seed"] if faults else []
    drop = get("gossip.drop_prob", 0.0) or 0.0
    if drop:
        fault_parts.append(f"message drop probability {_text(drop)}")
    fault_text = ", ".join(fault_parts) if fault_parts else "none (every node online, no stragglers, no message lost)"
    fault_text += f"; non-finite nodes: {get('gossip.on_nonfinite', 'raise')}"
    rounds, steps = summary.get("rounds"), summary.get("steps")
    final_step = summary.get("validated_step")
    final_text = f"from the validation after local step {final_step} (of {steps})"
    if at_end is not None and final_step == at_end:
        final_text = f"from the validation at the end (round {at_end}), after local step {final_step} (of {steps})"
    return {
        "model": model_text,
        "data": f"{get('data.class_path', 'not recorded')}, {folder}",
        "nodes (n)": _text(summary.get("nodes")),
        "peers (s)": _text(summary.get("peers")),
        "topology": (
            f"{summary.get('topology')}{_graph_text(summary.get('graph'))}, {summary.get('fragmentation')} "
            f"fragmentation, one round every {summary.get('every_n_steps')} local step(s)"
        ),
        "spectral gap": "not recorded" if summary.get("spectral_gap") is None else f"{summary['spectral_gap']:.4g}",
        "fragments (K)": _text(summary.get("fragments")),
        "Dirichlet alpha": alpha,
        "rounds": _text(rounds) + ("" if steps == rounds else f" ({steps} local steps)"),
        "batch size": f"{_text(get('data.init_args.batch_size'))} examples per node per local step",
        "optimizer": opt_text,
        "learning rate": lr_text,
        "test set": test_text,
        "validation": validation,
        "final metrics": final_text,
        "fault model": fault_text,
        "hardware": ", ".join(
            f"{key.split('.')[-1]} {_text(get(key))}"
            for key in (
                "trainer.accelerator",
                "trainer.devices",
                "trainer.num_nodes",
                "trainer.strategy",
                "trainer.precision",
            )
            if key in config
        ),
    }


def baseline_name(summary: Mapping[str, Any]) -> str:
    """What K = 1 is, from a run's ``summary.json``: ``"EL"`` (Epidemic Learning) on the EL topologies,
    ``"D-PSGD"`` on a fixed graph used whole (``peers="all"``), else ``"EL on <topology>"`` (peers sampled among
    the neighbours of a fixed graph)."""
    graph = summary.get("graph")
    if not graph:
        return "EL"
    return "D-PSGD" if graph.get("weights") != "el" else f"EL on {summary.get('topology')}"


def _graph_text(graph: Mapping[str, Any] | None) -> str:
    """`` (degree 8, metropolis-hastings weights)``: a fixed graph's settings as the summary recorded them."""
    if not graph:
        return ""
    parts = [f"{key} {_text(graph[key])}" for key in ("degree", "shape", "graph") if graph.get(key) is not None]
    if graph.get("directed"):
        parts.append("directed")
    low, high = graph.get("min_degree"), graph.get("max_degree")
    if low is not None and "degree" not in graph:
        parts.append(f"degree {low}" if low == high else f"degrees {low}-{high}")
    weights = graph.get("weights")
    parts.append("own fragment and received copies weighted equally" if weights == "el" else f"{weights} weights")
    return " (" + ", ".join(parts) + ")"


def describe_setup(
    runs: Mapping[tuple[int, int], Path],
    task: str,
    validated: Mapping[tuple[int, int], Sequence[int]] | None = None,
    at_end: Mapping[tuple[int, int], int | None] | None = None,
) -> list[str]:
    """The report's setup section (Markdown lines), read from every run's ``config.yaml`` and ``summary.json``.

    One table row per setting (task, model and d, data, n, s, topology, K, Dirichlet alpha, rounds, batch size,
    optimizer, learning rate, test-set size, validation interval, seeds, fault model, hardware): the value when all
    runs agree, else every value with the runs that have it. Then every other ``config.yaml`` key that differs
    between runs (:data:`GRID_KEYS` differ by design and are left out).

    Args:
        runs: ``{(K, seed): run directory}``, each holding ``config.yaml`` and ``summary.json``.
        task: ``"classification"`` or ``"rating"``.
        validated: ``{(K, seed): rounds}`` at which each run logged a validation during fit (its ``metrics.csv``).
        at_end: ``{(K, seed): round}`` of each run's end-of-fit validation (``MosaicCLI.after_fit``), if it had one
            besides those during fit.

    Raises:
        FileNotFoundError: If a run lacks ``config.yaml`` or ``summary.json`` (naming the run and the file).
    """
    _check_runs(runs)
    configs, per_run = {}, {}
    seed_notes = []
    for (k, seed), run in sorted(runs.items()):
        name = _run_name(k, seed)
        config, summary = _load_run(run)
        configs[name] = config
        rounds = (validated or {}).get((k, seed), ())
        per_run[name] = _setup_rows(config, summary, rounds, (at_end or {}).get((k, seed)))
        wrong = [f"{key} {_text(config[key])}" for key in SEED_KEYS if key in config and config[key] != seed]
        if wrong:
            seed_notes.append(f"{name}: {', '.join(wrong)}")
    names = list(per_run)
    seeds = sorted({seed for _, seed in runs})
    seed_text = ", ".join(str(s) for s in seeds) + "; each run sets " + ", ".join(SEED_KEYS) + " to its seed"
    if seed_notes:
        seed_text += " except " + "; ".join(seed_notes)
    rows = {"task": task}
    for label in per_run[names[0]]:
        values = {name: per_run[name][label] for name in names}
        if label == "fragments (K)":  # the grid's axis: every value, one run per K and seed
            ks = sorted({int(v) for v in values.values() if v.isdigit()})
            baseline = baseline_name(_load_run(next(iter(runs.values())))[1])
            rows[label] = ", ".join(str(k) for k in ks) + f" (one run per K and seed; K = 1 is {baseline})"
        elif label == "spectral gap" and len(set(values.values())) > 1 and "not recorded" not in values.values():
            gaps = sorted(float(v) for v in values.values())  # a random graph per seed
            rows[label] = f"{gaps[0]:.4g} to {gaps[-1]:.4g} over the runs (each seed draws its own graph)"
        else:
            rows[label] = _merged(values)
    rows["seeds"] = seed_text
    lines = ["## Setup", "", "Read from every run's `config.yaml` and `summary.json`.", ""]
    lines += ["| setting | value |", "|---|---|"]
    lines += [f"| {label} | {_cell(value)} |" for label, value in rows.items()]
    differing = []
    keys = sorted({key for config in configs.values() for key in config} - GRID_KEYS)
    for key in keys:
        values = {name: _text(configs[name].get(key, "(absent)")) for name in names}
        if len(set(values.values())) > 1:
            differing.append(f"- `{key}`: {_merged(values)}")
    lines += ["", "Differences between runs besides K and the seeds:"]
    lines += differing if differing else ["none (their `config.yaml` differ only in K, the seeds and the log folder)."]
    return lines


def _merged(values: Mapping[str, str]) -> str:
    """One value when every run has it, else ``differs between runs: v1 (runs); v2 (runs)``."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name, value in values.items():
        groups[value].append(name)
    if len(groups) == 1:
        return next(iter(groups))
    return "differs between runs: " + "; ".join(f"{v} ({', '.join(names)})" for v, names in groups.items())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _check_runs(runs: Mapping[tuple[int, int], Path]) -> None:
    for (k, seed), run in sorted(runs.items()):
        for file in (CONFIG_FILE, SUMMARY_FILE):
            if not (Path(run) / file).is_file():
                raise FileNotFoundError(
                    f"run {_run_name(k, seed)} has no {file} in {run}: every run of the report needs the "
                    f"{CONFIG_FILE} LightningCLI saves and the {SUMMARY_FILE} MosaicSummary writes"
                )


def plot_curves(
    curves: Mapping[int, tuple[Sequence[int], Sequence[float], Sequence[float] | None]],
    ylabel: str,
    title: str,
    log_scale: bool = False,
    baseline: str = "EL",
) -> Any:
    """One figure of a metric over rounds, one curve per K with its own colour, line style and marker.

    The line style and marker of the i-th K (increasing) are ``LINE_STYLES[i]`` and ``MARKERS[i]`` (cycled past
    8); lines get thinner and the hollow markers smaller with i, and the markers (at most about 12 per line) are
    staggered between Ks, so that curves lying on top of each other stay visible as separate curves: a wide line
    under a narrower one, markers nested in each other. A shaded band of ± ``spread`` is drawn around each curve.

    Args:
        curves: ``{K: (rounds, means, spread or None)}``, the arrays of equal length (``spread``: the band's
            half-height, e.g. the std over seeds; ``None``: no band).
        ylabel: The y-axis label.
        title: The figure title.
        log_scale: Log y axis (consensus distance); a linear one, said so in the y label, when a curve has a
            value <= 0 (a log axis would leave it out: e.g. consensus distance exactly 0 with n = 2, s = 1).
        baseline: The name of K = 1 (:func:`baseline_name`).

    Returns:
        The ``matplotlib.figure.Figure`` (the caller saves and closes it); its axes hold one ``Line2D`` per K,
        labelled ``<baseline> (K = 1)`` or ``Mosaic K = k``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    ordered = sorted(curves)
    for index, k in enumerate(ordered):
        steps, means, spread = curves[k]
        if not len(steps):
            continue
        step = max(1, len(steps) // 12)
        label = f"{baseline} (K = 1)" if k == 1 else f"Mosaic K = {k}"
        (line,) = axes.plot(
            steps,
            means,
            label=label,
            linestyle=LINE_STYLES[index % len(LINE_STYLES)],
            marker=MARKERS[index % len(MARKERS)],
            markerfacecolor="none",
            markersize=max(4.0, 11.0 - 2.0 * index),
            markevery=((index * step) // len(ordered), step),
            linewidth=max(0.8, 2.8 - 0.6 * index),
        )
        if spread is not None:
            mean, band = np.asarray(means, dtype=np.float64), np.asarray(spread, dtype=np.float64)
            axes.fill_between(steps, mean - band, mean + band, alpha=0.15, color=line.get_color())
    axes.set_xlabel("round")
    axes.set_ylabel(ylabel)
    if log_scale and all(v > 0 for _, means, _ in curves.values() for v in means):
        axes.set_yscale("log")
    elif log_scale:
        axes.set_ylabel(f"{ylabel} (linear scale: some values are 0)")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    return figure


def write_report(runs: Mapping[tuple[int, int], Path], directory: Path, task: str, title: str, command: str) -> Path:
    """Write ``report.md``, ``curves.csv`` and one PNG per curve into ``directory``.

    ``report.md``: the command, the setup (:func:`describe_setup`), and per K the final metrics (mean ± half-width
    of the 95% Student-t interval over seeds, nothing after ``±`` with one seed) and their difference to K = 1
    (EL, D-PSGD or EL on a fixed graph, :func:`baseline_name`; mean ± half-width over seeds of the per-seed
    differences, the same seed giving the same partition and initialization for every K), every number written
    by :func:`format_metric`. ``curves.csv``: every plotted number (``metric,fragments,round,mean,std,seeds``).
    PNGs: :func:`plot_curves`, mean ± std over seeds.

    Args:
        runs: ``{(K, seed): run directory}``; each holds ``metrics.csv``, ``summary.json`` and ``config.yaml``.
        directory: Output folder (created).
        task: ``"classification"`` or ``"rating"`` (which metrics are reported).
        title: First line of the report.
        command: The command that produced it, quoted in the report.

    Returns:
        The path of ``report.md``.

    Raises:
        ValueError: If ``runs`` is empty or ``task`` is unknown.
        FileNotFoundError: If a run lacks ``config.yaml`` or ``summary.json``; nothing is written then.
    """
    if not runs:
        raise ValueError("runs is empty: nothing to report")
    if task not in SUMMARY_KEYS:
        raise ValueError(f"task must be one of {tuple(SUMMARY_KEYS)}, got {task!r}")
    _check_runs(runs)
    import matplotlib.pyplot as plt

    curve_names = CLASSIFICATION_CURVES if task == "classification" else RATING_CURVES
    fragments = sorted({k for k, _ in runs})
    seeds = sorted({s for _, s in runs})
    per_k: dict[int, dict[str, dict[int, list[float]]]] = {k: defaultdict(lambda: defaultdict(list)) for k in fragments}
    finals: dict[int, dict[str, dict[int, float]]] = {k: defaultdict(dict) for k in fragments}
    validated: dict[tuple[int, int], list[int]] = {}
    at_end: dict[tuple[int, int], int | None] = {}
    first_validation = next(iter(curve_names))
    for (k, seed), run in sorted(runs.items()):
        summary = json.loads((run / SUMMARY_FILE).read_text())
        last = summary.get("steps")  # the end-of-fit validation is logged at this step (read_curves)
        logs = sorted(run.glob("metrics*.csv"))  # metrics.part*.csv: before a resume
        merged: dict[str, dict[int, float]] = defaultdict(dict)
        for log in logs:
            for name, curve in read_curves(log, list(curve_names), last).items():
                merged[name].update(curve)
        validated[(k, seed)], at_end[(k, seed)] = _validations(logs, first_validation, last)
        for name, curve in merged.items():
            for step, value in curve.items():
                per_k[k][name][step].append(value)
        for key in SUMMARY_KEYS[task]:
            if summary.get(key) is not None:
                finals[k][key][seed] = float(summary[key])
    setup = describe_setup(runs, task, validated, at_end)
    baseline = baseline_name(json.loads((next(iter(runs.values())) / SUMMARY_FILE).read_text()))

    directory.mkdir(parents=True, exist_ok=True)
    rows = ["metric,fragments,round,mean,std,seeds"]
    for name, label in curve_names.items():
        curves = {}
        for k in fragments:
            steps = sorted(step for step, values in per_k[k][name].items() if len(values) == len(seeds))
            stats = [aggregate(per_k[k][name][s]) for s in steps]
            rows += [f"{name},{k},{s},{m:.6g},{sd:.6g},{len(seeds)}" for s, (m, sd) in zip(steps, stats)]
            curves[k] = (steps, [m for m, _ in stats], [sd for _, sd in stats] if len(seeds) > 1 else None)
        title_k = f"{label} (mean ± std over {len(seeds)} seed(s))"
        figure = plot_curves(curves, label, title_k, name == "gossip/consensus_distance", baseline)
        png = directory / (name.split("/")[1] + ".png")
        tmp = png.with_name(png.stem + ".tmp.png")
        figure.savefig(tmp, dpi=100)
        plt.close(figure)
        os.replace(tmp, png)
    _write_atomic(directory / "curves.csv", "\n".join(rows) + "\n")

    keys = SUMMARY_KEYS[task]
    compared = keys[:1] + keys[2:3]
    header = "| K | " + " | ".join(keys) + " | " + " | ".join(f"{key} − {baseline}" for key in compared) + " |"
    spread = (
        f"mean ± half-width of the {CONFIDENCE:.0%} Student-t confidence interval over the {len(seeds)} seeds"
        if len(seeds) > 1
        else "one seed, no interval"
    )
    lines = [f"# {title}", "", f"Command: `{command}`", ""]
    lines += setup
    lines += ["", "## Final metrics", "", f"Seeds: {seeds}; {spread}, at the last validation.", ""]
    written = {
        "accuracy": "accuracies in percent (differences in percentage points)",
        "error": "RMSE with 4 decimals",
        "scientific": "consensus distance (1/n) sum_i ‖x_i − x̄‖² with 3 significant digits",
    }
    kinds = dict.fromkeys(metric_kind(key) for key in keys)
    lines += ["Written as: " + "; ".join(written[kind] for kind in kinds) + "."]
    lines += [f"`− {baseline}`: the per-seed difference to K = 1 (the same seed gives every K the same partition and"]
    lines += ["initialization), in the same format.", ""]
    lines += [header, "|" + "---|" * (1 + len(keys) + len(compared))]
    for k in fragments:
        cells = []
        for key in keys:
            values = list(finals[k][key].values())
            mean = aggregate(values)[0] if values else None
            cells.append(format_metric(mean, metric_kind(key), half_width(values)))
        diffs = []
        for key in compared:
            paired = [
                finals[k][key][s] - finals[1][key][s] for s in finals[k][key] if s in finals.get(1, {}).get(key, {})
            ]
            if k == 1 or not paired:
                diffs.append("—")
            else:
                diffs.append(format_metric(aggregate(paired)[0], metric_kind(key), half_width(paired), signed=True))
        name = f"1 ({baseline})" if k == 1 else str(k)
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
    lines += ["", "Plots: " + ", ".join(f"`{n.split('/')[1]}.png`" for n in curve_names) + "; numbers: `curves.csv`."]
    report = directory / "report.md"
    _write_atomic(report, "\n".join(lines) + "\n")
    return report
