"""``MosaicSummary``: the end-of-run summary of a Mosaic Learning experiment, one table printed and written as JSON."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_mosaic.callbacks.faults import MosaicFaults
from lightning_mosaic.callbacks.gossip import MosaicGossip
from lightning_mosaic.callbacks.target import GossipTarget, ModuleParameters
from lightning_mosaic.replicas import node_batch_size

SUMMARY_FILE = "summary.json"


class MosaicSummary(Callback):
    """The run summary of a Mosaic Learning experiment: one table, printed and written as ``summary.json``.

    Works with any module the gossip can mix (a :class:`~lightning_mosaic.MosaicModule`, or a LightningModule run
    one node per process). It measures the wall-clock seconds spent in training batches (from
    ``on_train_batch_start`` to ``on_train_batch_end``: forward, backward, optimizer step and, when it is placed
    after :class:`~lightning_mosaic.callbacks.MosaicGossip`, the gossip round; data loading, evaluation and
    checkpoints excluded) and of the whole ``fit``, and remembers the step of the last validation. At the end of
    ``fit``, and after every later ``trainer.validate``, it writes ``summary.json`` (atomically) into
    ``trainer.log_dir`` (or ``default_root_dir``) from rank 0, with the last validation's metrics:

    - the standard rows (:data:`_ROWS`: n, K, s, rounds, node and averaged-model accuracy or RMSE, consensus
      distance, communication, seconds);
    - ``metrics``: every metric Lightning holds (``trainer.callback_metrics``), e.g. a wrapped LightningModule's
      ``val_acc``, ``val_acc/node_std``, ``val_acc/avg_model``;
    - ``validated_step``: the ``global_step`` of that validation (-1: none), next to ``steps``;
    - ``eval_examples``: the examples that validation evaluated on this process (the sum over its batches of the
      first dimension of each batch's first tensor; every node's model and the averaged model see all of them),
      ``None`` before any validation.

    Args:
        write: Write ``summary.json`` (default True).
        print_table: Print the table on rank 0 when it is written (default False).

    Attributes:
        train_seconds: Seconds measured in training batches.
        batches: Training batches measured.
        validated_step: ``global_step`` of the last completed validation, -1 before any.
        eval_examples: Examples in the last completed validation, ``None`` before any.
        summary: The last summary built (a dict), ``None`` before the end of the first fit.
    """

    def __init__(self, write: bool = True, print_table: bool = False) -> None:
        self.write = write
        self.print_table = print_table
        self.train_seconds = 0.0
        self.batches = 0
        self.fit_seconds = 0.0
        self.validated_step = -1
        self.eval_examples: int | None = None
        self._eval_count = 0
        self.summary: dict[str, Any] | None = None
        self._start: float | None = None
        self._fit_start: float | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._start is not None:
            self.train_seconds += time.perf_counter() - self._start
            self.batches += 1
            self._start = None

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_count = 0

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_count += node_batch_size(batch)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validated_step = trainer.global_step
        self.eval_examples = self._eval_count
        if self.summary is not None and trainer.state.fn == "validate":  # after fit: the summary follows it
            self.finish(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._fit_start is not None:
            self.fit_seconds += time.perf_counter() - self._fit_start
            self._fit_start = None
        self.finish(trainer, pl_module)

    def finish(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """Build the summary from the trainer's current metrics, write it and print it (as configured)."""
        self.summary = run_summary(trainer, pl_module, trainer.callback_metrics, self.fit_seconds, self.train_seconds)
        self.summary["validated_step"] = self.validated_step
        self.summary["eval_examples"] = self.eval_examples
        directory = self.directory(trainer)  # on every rank: trainer.log_dir is a collective in multi-process runs
        if trainer.is_global_zero:
            if self.write:
                path = write_summary(self.summary, directory)
                if self.print_table:
                    print(f"\nMosaic Learning summary ({path}):\n{format_summary(self.summary)}", flush=True)
            elif self.print_table:
                print(f"\nMosaic Learning summary:\n{format_summary(self.summary)}", flush=True)
        return self.summary

    @staticmethod
    def directory(trainer: Trainer) -> Path:
        """Where ``summary.json`` goes: ``trainer.log_dir``, else ``default_root_dir``. Every rank must call it
        (``trainer.log_dir`` broadcasts rank 0's in multi-process runs)."""
        return Path(trainer.log_dir or trainer.default_root_dir)

    def state_dict(self) -> dict[str, Any]:
        return {"train_seconds": self.train_seconds, "batches": self.batches, "fit_seconds": self.fit_seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_seconds = float(state_dict.get("train_seconds", 0.0))
        self.batches = int(state_dict.get("batches", 0))
        self.fit_seconds = float(state_dict.get("fit_seconds", 0.0))


_ROWS = [
    ("nodes", "nodes (n)", "{}"),
    ("fragments", "fragments (K)", "{}"),
    ("peers", "peers (s)", "{}"),
    ("topology", "topology", "{}"),
    ("spectral_gap", "spectral gap of the mixing matrix", "{:.4g}"),
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


def _metric(metrics: Mapping[str, Any], name: str) -> float | None:
    return float(metrics[name]) if name in metrics else None


def run_summary(
    trainer: Trainer,
    module: LightningModule,
    metrics: Mapping[str, Any],
    seconds: float,
    train_seconds: float | None = None,
) -> dict[str, Any]:
    """Collect the summary of a finished run.

    Args:
        trainer: The trainer after ``fit``.
        module: The trained module (a :class:`~lightning_mosaic.MosaicModule`, or one node per process).
        metrics: Validation metrics of the final parameters (``val/node_acc_mean``, ``val/node_acc_std``,
            ``val/avg_model_acc``, ``gossip/consensus_distance``; for the rating task ``val/node_rmse_mean``,
            ``val/node_rmse_std``, ``val/avg_model_rmse``, ``val/node_rating_acc_mean``), e.g.
            ``trainer.callback_metrics``; missing ones (no validation data, or another task) are ``None``.
        seconds: Wall-clock duration of ``fit`` in seconds (data loading, evaluation and checkpoints included).
        train_seconds: Seconds spent in training batches (local steps and gossip).

    Returns:
        A JSON-serializable dict with the rows of :data:`_ROWS` (gossip fields are ``None`` without
        :class:`~lightning_mosaic.callbacks.MosaicGossip`), ``faults`` (the settings of an active
        :class:`~lightning_mosaic.callbacks.MosaicFaults`, else ``None``), ``optimizer`` (the first optimizer's
        ``class`` and its constructor settings, ``torch.optim.Optimizer.defaults``, e.g. ``lr``; ``None`` without
        one) and ``metrics``, every metric as a float.
    """
    gossip = next((c for c in trainer.callbacks if isinstance(c, MosaicGossip)), None)  # type: ignore[attr-defined]
    faults = next((c for c in trainer.callbacks if isinstance(c, MosaicFaults)), None)  # type: ignore[attr-defined]
    rounds = gossip.rounds if gossip is not None else 0
    communication = (
        gossip.communication() if gossip is not None else {"values_sent_per_node": 0, "bytes_sent_per_node": 0}
    )
    target = (
        module
        if isinstance(module, GossipTarget)
        else ModuleParameters(module, trainer.world_size, trainer.global_rank)
    )
    return {
        "nodes": target.num_nodes,
        "fragments": gossip.fragments if gossip else None,
        "peers": gossip.peers if gossip else None,
        "topology": gossip.topology if gossip else None,
        "graph": gossip.graph_settings() if gossip else None,
        "spectral_gap": gossip.spectral_gap() if gossip else None,
        "fragmentation": gossip.fragmentation if gossip else None,
        "every_n_steps": gossip.every_n_steps if gossip else None,
        "faults": faults.settings if faults is not None and faults.active else None,
        "rounds": rounds,
        "steps": trainer.global_step,
        "optimizer": _optimizer_settings(trainer),
        "node_acc_mean": _metric(metrics, "val/node_acc_mean"),
        "node_acc_std": _metric(metrics, "val/node_acc_std"),
        "avg_model_acc": _metric(metrics, "val/avg_model_acc"),
        "val_loss": _metric(metrics, "val/loss"),
        **{key: _metric(metrics, f"val/{key}") for key in _TASK_ROWS},
        "consensus_distance": _metric(metrics, "gossip/consensus_distance"),
        "values_sent_per_node_per_round": communication["values_sent_per_node"],
        "bytes_sent_per_node_per_round": communication["bytes_sent_per_node"],
        "parameters_per_node": sum(target.parameter_sizes),
        "fit_seconds": seconds,
        "train_seconds": train_seconds,
        "train_seconds_per_round": None if train_seconds is None else train_seconds / max(rounds, 1),
        "metrics": {name: _metric(metrics, name) for name in sorted(metrics) if _scalar(metrics[name])},
    }


def _optimizer_settings(trainer: Trainer) -> dict[str, Any] | None:
    """``{"class": module.QualifiedName, **defaults}`` of the trainer's first optimizer (JSON values only)."""
    if not trainer.optimizers:
        return None
    optimizer = trainer.optimizers[0]
    settings: dict[str, Any] = {"class": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"}
    for key, value in optimizer.defaults.items():
        if value is None or isinstance(value, (bool, int, float, str)):
            settings[key] = value
        elif isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) for v in value):
            settings[key] = list(value)
        elif hasattr(value, "numel") and value.numel() == 1:  # a tensor learning rate
            settings[key] = float(value)
    return settings


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) or (hasattr(value, "numel") and value.numel() == 1)


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as an aligned two-column text table: the standard rows, then, for every metric logged with a
    node std (a wrapped LightningModule's ``name``, ``name/node_std``, ``name/avg_model``), its three values."""
    lines = []
    for key, label, fmt in _ROWS:
        value = summary.get(key)
        if value is None and key in _TASK_ROWS:
            continue
        lines.append((label, "-" if value is None else fmt.format(value)))
    metrics = summary.get("metrics") or {}
    for name in sorted(metrics):
        if name + "/node_std" not in metrics or name.startswith(("val/", "test/", "train/", "gossip/")):
            continue
        for suffix, what in (("", "node mean"), ("/node_std", "node std"), ("/avg_model", "averaged model")):
            if metrics.get(name + suffix) is not None:
                lines.append((f"{name} ({what})", f"{metrics[name + suffix]:.4g}"))
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
