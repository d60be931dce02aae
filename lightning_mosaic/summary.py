"""End-of-run summary of a Mosaic Learning experiment: one table, printed and written as JSON."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_mosaic.callbacks.gossip import MosaicGossip
from lightning_mosaic.module import MosaicModule

SUMMARY_FILE = "summary.json"


class RoundTimer(Callback):
    """Wall-clock seconds spent in training batches, from ``on_train_batch_start`` to ``on_train_batch_end``.

    Add it after :class:`~lightning_mosaic.callbacks.MosaicGossip` so that the time covers forward, backward,
    optimizer step and the gossip round; data loading, evaluation and checkpointing are excluded.

    Attributes:
        seconds: Total seconds measured.
        batches: Number of training batches measured.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.batches = 0
        self._start: float | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self.batches += 1
            self._start = None


_ROWS = [
    ("nodes", "nodes (n)", "{}"),
    ("fragments", "fragments (K)", "{}"),
    ("peers", "peers (s)", "{}"),
    ("topology", "topology", "{}"),
    ("rounds", "rounds", "{}"),
    ("node_acc_mean", "node accuracy mean", "{:.4f}"),
    ("node_acc_std", "node accuracy std", "{:.4f}"),
    ("avg_model_acc", "averaged-model accuracy", "{:.4f}"),
    ("node_rmse_mean", "node RMSE mean", "{:.4f}"),
    ("node_rmse_std", "node RMSE std", "{:.4f}"),
    ("avg_model_rmse", "averaged-model RMSE", "{:.4f}"),
    ("node_rating_acc_mean", "node rating accuracy mean", "{:.4f}"),
    ("consensus_distance", "consensus distance", "{:.4g}"),
    ("values_sent_per_node_per_round", "values sent per node per round", "{:,}"),
    ("train_seconds_per_round", "seconds per round (train + gossip)", "{:.4f}"),
    ("fit_seconds", "seconds for fit (all included)", "{:.1f}"),
]


#: Rows only some tasks have (rating prediction, :class:`~lightning_mosaic.tasks.RatingModule`): left out of the
#: table when the run did not log them.
_TASK_ROWS = ("node_rmse_mean", "node_rmse_std", "avg_model_rmse", "node_rating_acc_mean")


def _metric(metrics: dict[str, Any], name: str) -> float | None:
    return float(metrics[name]) if name in metrics else None


def run_summary(
    trainer: Trainer, module: MosaicModule, metrics: dict[str, Any], seconds: float, train_seconds: float | None = None
) -> dict[str, Any]:
    """Collect the summary of a finished run.

    Args:
        trainer: The trainer after ``fit``.
        module: The trained module.
        metrics: Validation metrics of the final parameters (``val/node_acc_mean``, ``val/node_acc_std``,
            ``val/avg_model_acc``, ``gossip/consensus_distance``; for the rating task ``val/node_rmse_mean``,
            ``val/node_rmse_std``, ``val/avg_model_rmse``, ``val/node_rating_acc_mean``), e.g. from
            ``trainer.validate``; missing ones (no validation data, or another task) are ``None``.
        seconds: Wall-clock duration of ``fit`` in seconds (data loading, evaluation and checkpoints included).
        train_seconds: Seconds spent in training batches (local steps and gossip, see :class:`RoundTimer`).

    Returns:
        A JSON-serializable dict with the rows of :data:`_ROWS` (gossip fields are ``None`` without
        :class:`~lightning_mosaic.callbacks.MosaicGossip`).
    """
    gossip = next((c for c in trainer.callbacks if isinstance(c, MosaicGossip)), None)  # type: ignore[attr-defined]
    rounds = gossip.rounds if gossip is not None else 0
    communication = (
        gossip.communication() if gossip is not None else {"values_sent_per_node": 0, "bytes_sent_per_node": 0}
    )
    return {
        "nodes": module.num_nodes,
        "fragments": gossip.fragments if gossip else None,
        "peers": gossip.peers if gossip else None,
        "topology": gossip.topology if gossip else None,
        "fragmentation": gossip.fragmentation if gossip else None,
        "every_n_steps": gossip.every_n_steps if gossip else None,
        "rounds": rounds,
        "steps": trainer.global_step,
        "node_acc_mean": _metric(metrics, "val/node_acc_mean"),
        "node_acc_std": _metric(metrics, "val/node_acc_std"),
        "avg_model_acc": _metric(metrics, "val/avg_model_acc"),
        "val_loss": _metric(metrics, "val/loss"),
        **{key: _metric(metrics, f"val/{key}") for key in _TASK_ROWS},
        "consensus_distance": _metric(metrics, "gossip/consensus_distance"),
        "values_sent_per_node_per_round": communication["values_sent_per_node"],
        "bytes_sent_per_node_per_round": communication["bytes_sent_per_node"],
        "parameters_per_node": module.replicas.num_coordinates,
        "fit_seconds": seconds,
        "train_seconds": train_seconds,
        "train_seconds_per_round": None if train_seconds is None else train_seconds / max(rounds, 1),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as an aligned two-column text table."""
    lines = []
    for key, label, fmt in _ROWS:
        value = summary.get(key)
        if value is None and key in _TASK_ROWS:
            continue
        lines.append((label, "-" if value is None else fmt.format(value)))
    width = max(len(label) for label, _ in lines)
    vwidth = max(len(v) for _, v in lines)
    rule = "-" * (width + vwidth + 3)
    return "\n".join([rule, *(f"{label:<{width}} | {v:>{vwidth}}" for label, v in lines), rule])


def write_summary(summary: dict[str, Any], directory: str | Path) -> Path:
    """Write ``summary.json`` in ``directory`` atomically (temporary name, then ``os.replace``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / SUMMARY_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, path)
    return path
