"""A user's own ``LightningModule`` run as n nodes: its steps and epoch hooks per node, its logs reduced over nodes.

:class:`~lightning_mosaic.MosaicModule` holds the user's module as the template of its replicas and calls this
module's :class:`LightningNodes` for every step. Each node runs the user's unchanged ``training_step``,
``validation_step`` and ``test_step`` with that node's parameters, buffers and metric objects
(:meth:`~lightning_mosaic.replicas.ReplicaStack.call_node`). What the user logs with ``self.log`` is captured per
node and logged once, reduced over the nodes (names in :class:`LightningNodes`).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from lightning_mosaic.distributed.sharding import all_reduce_sum
from lightning_mosaic.metrics import own_copy

NODE_STD_SUFFIX = "/node_std"
"""Appended to a name the user logs: the population std over nodes of the per-node values."""
AVG_MODEL_SUFFIX = "/avg_model"
"""Appended to a name the user logs in evaluation: the value of the averaged model ``x_bar``."""

EPOCH_HOOKS = ("on_train_epoch_end", "on_validation_epoch_end", "on_test_epoch_end")
"""The user's epoch hooks run once per node (and, in evaluation, for the averaged model), with that node's metrics."""

_AVERAGE = "average"
"""Key of the averaged model's slot, next to the node rows 0..m-1."""


def is_lightning_module(model: Any) -> bool:
    """Whether ``model`` is a ``LightningModule`` instance or subclass."""
    return isinstance(model, LightningModule) or (isinstance(model, type) and issubclass(model, LightningModule))


def step_loss(output: Any, hook: str) -> Tensor:
    """The loss a user's ``training_step`` returned: a scalar tensor, or a mapping's ``"loss"``.

    Raises:
        ValueError: If the step returned ``None`` (skipping a node's step is not supported), a mapping without
            ``"loss"``, or a tensor that is not a scalar.
    """
    loss = output.get("loss") if isinstance(output, Mapping) else output
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        what = (
            "None"
            if loss is None
            else f"a tensor of shape {tuple(loss.shape)}"
            if torch.is_tensor(loss)
            else type(loss).__name__
        )
        raise ValueError(
            f"{hook} must return the node's loss as a scalar tensor (or a dict with a scalar 'loss'), got {what}; "
            "every node trains at every step under MosaicModule (returning None to skip a step is not supported)"
        )
    return loss


def _as_float(value: Any, name: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"self.log({name!r}, ...) got a tensor of shape {tuple(value.shape)}; log scalars")
        return float(value.detach())
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return float(value)  # type: ignore[arg-type]
    raise ValueError(f"self.log({name!r}, ...) got {type(value).__name__}; log a number, a tensor or a Metric")


def _batch_size(batch: Any) -> int:
    sizes: list[int] = []
    apply_to_collection(batch, Tensor, lambda t: sizes.append(t.shape[0]) if t.dim() else None)
    return sizes[0] if sizes else 1


class _Record:
    """One logged name: per-slot weighted sums (values logged in steps) or metric objects, and the user's options."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.total: dict[Any, float] = {}
        self.weight: dict[Any, float] = {}
        self.metrics: dict[Any, Metric | MetricCollection] = {}

    def add(self, slot: Any, value: Any, weight: float, name: str) -> None:
        if isinstance(value, (Metric, MetricCollection)):
            self.metrics[slot] = value
            return
        reduce_fx = self.options.get("reduce_fx", "mean")
        if reduce_fx not in ("mean", "sum", torch.mean, torch.sum):
            raise ValueError(
                f"self.log({name!r}, ..., reduce_fx={reduce_fx!r}): MosaicModule reduces logged values over batches "
                "with 'mean' (weighted by batch size) or 'sum'"
            )
        weight = 1.0 if reduce_fx in ("sum", torch.sum) else weight
        self.total[slot] = self.total.get(slot, 0.0) + _as_float(value, name) * weight
        self.weight[slot] = self.weight.get(slot, 0.0) + weight

    def value(self, slot: Any) -> float | None:
        if slot in self.metrics:
            computed = self.metrics[slot].compute()
            return _as_float(computed, "metric") if not isinstance(computed, Mapping) else None
        if slot not in self.total:
            return None
        if self.options.get("reduce_fx", "mean") in ("sum", torch.sum):
            return self.total[slot]
        return self.total[slot] / max(self.weight[slot], 1e-300)


class LightningNodes:
    """Runs a user's ``LightningModule`` (the template of a :class:`~lightning_mosaic.replicas.ReplicaStack`) as
    this process's nodes.

    Per node, with that node's parameters, buffers and its own copy of every torchmetrics ``Metric`` (or
    ``MetricCollection``) attribute of the module: ``training_step`` (node batch ``batch[i]``),
    ``validation_step`` and ``test_step`` (the shared evaluation batch; the averaged model runs them too), and the
    epoch hooks of :data:`EPOCH_HOOKS`. Other hooks of the user's module are not called; ``configure_optimizers``
    is called once and its optimizer rebound to the ``(n, d)`` rows by
    :class:`~lightning_mosaic.MosaicModule`.

    What the user logs (``self.log`` / ``self.log_dict``, with a number, a tensor or a Metric) is captured per
    node; then, under the user's name ``name``:

    - ``name``: the mean over all n nodes of the per-node values (so ``ModelCheckpoint(monitor=name)``,
      ``EarlyStopping`` and ``ReduceLROnPlateau`` see the node average);
    - ``name/node_std``: the population std over nodes;
    - ``name/avg_model`` (evaluation only): the value of the averaged model ``x_bar``.

    A value logged in a step is reduced over the epoch's batches per node first (mean weighted by batch size, or
    sum with ``reduce_fx="sum"``); a Metric object is computed per node at the epoch's end and reset. Values logged
    in ``training_step`` with ``on_step`` are logged every step as the mean (and std) over this process's nodes.

    Args:
        module: The user's module (the stack's template; kept on the run's device).
        first_node: Global index of this process's first node.
        num_local: m, the number of nodes held here.
        num_nodes: n over all processes.
        sharded: Whether the nodes are spread over processes (epoch values are then summed over processes).
    """

    def __init__(self, module: LightningModule, first_node: int, num_local: int, num_nodes: int, sharded: bool):
        self.module = module
        self.first_node, self.num_local, self.num_nodes, self.sharded = first_node, num_local, num_nodes, sharded
        self.metric_paths = _metric_paths(module)
        slots: list[Any] = [*range(num_local), _AVERAGE]
        self.node_metrics = nn.ModuleList(
            nn.ModuleDict({path.replace(".", "__"): own_copy(_get(module, path)) for path in self.metric_paths})
            for _ in slots
        )
        """Every slot's metric copies (rows 0..m-1, then the averaged model), registered by the module that holds
        this object so that they follow its device."""
        self._slots = {slot: index for index, slot in enumerate(slots)}
        self._records: dict[str, _Record] = {}
        self._capturing: tuple[Any, int] | None = None

    # -- capture ------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def node(self, slot: Any, batch_size: int = 1) -> Iterator[None]:
        """Within the block, the user's module logs into ``slot`` (a row, or the averaged model) and uses that slot's
        metric objects."""
        module = self.module
        originals = {path: _get(module, path) for path in self.metric_paths}
        copies = self.node_metrics[self._slots[slot]]
        for path in self.metric_paths:
            _set(module, path, copies[path.replace(".", "__")])
        self._capturing = (slot, batch_size)
        module.log = self._log  # type: ignore[method-assign]  # the instance's log; log_dict calls it too
        try:
            yield
        finally:
            del module.log
            self._capturing = None
            for path, original in originals.items():
                _set(module, path, original)

    def _log(self, name: str, value: Any, **options: Any) -> None:
        assert self._capturing is not None
        slot, batch_size = self._capturing
        record = self._records.get(name)
        if record is None:
            record = self._records[name] = _Record(options)
        record.add(slot, value, float(options.get("batch_size") or batch_size), name)

    # -- steps --------------------------------------------------------------------------------------------------

    def run(self, call: Callable[[Any], Any], slot: Any, batch: Any) -> Any:
        """``call(slot)`` with the user's module logging into ``slot``, batch size taken from ``batch``."""
        with self.node(slot, _batch_size(batch)):
            return call(slot)

    def step_values(self) -> dict[str, tuple[Tensor, dict[str, Any]]]:
        """After a training step: every number or tensor this step's nodes logged, as ``(values (m,), options)``;
        those names are then cleared (MosaicModule logs their node mean with the user's options, so Lightning
        reduces them over the epoch as it would). Metric objects stay until the epoch's end."""
        out = {}
        for name, record in list(self._records.items()):
            if record.metrics:
                continue
            values = torch.tensor([record.total[s] / max(record.weight[s], 1e-300) for s in sorted(record.total)])
            out[name] = (values, record.options)
            del self._records[name]
        return out

    def epoch_values(self, with_average: bool, device: torch.device) -> dict[str, Tensor]:
        """At an epoch's end: every captured name reduced per node over the epoch, then over all n nodes (a
        collective per name in multi-process runs: every process logged the same names). Clears the records and
        resets the metric copies."""
        out: dict[str, Tensor] = {}
        for name in sorted(self._records):
            record = self._records[name]
            per_node = torch.zeros(self.num_nodes, dtype=torch.float64, device=device)
            average = torch.zeros(2, dtype=torch.float64, device=device)  # (value, present)
            for row in range(self.num_local):
                value = record.value(row)
                per_node[self.first_node + row] = math.nan if value is None else value
            if with_average and (value := record.value(_AVERAGE)) is not None:
                average[0], average[1] = value, 1.0
            if self.sharded:
                per_node, average = all_reduce_sum(per_node), all_reduce_sum(average)
            out[name] = per_node.mean()
            out[name + NODE_STD_SUFFIX] = per_node.std(correction=0)
            if float(average[1]) > 0:
                out[name + AVG_MODEL_SUFFIX] = average[0] / average[1]
        self._records.clear()
        for copies in self.node_metrics:
            for metric in copies.values():
                metric.reset()
        return out


def _metric_paths(module: nn.Module) -> list[str]:
    """Dotted paths of the module's top-most Metric / MetricCollection attributes."""
    paths: list[str] = []
    for name, sub in module.named_modules():
        if name and isinstance(sub, (Metric, MetricCollection)) and not any(name.startswith(p + ".") for p in paths):
            paths.append(name)
    return paths


def _get(module: nn.Module, path: str) -> Any:
    return module.get_submodule(path)


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, attr, value)
