"""A user's own ``LightningModule`` run as n nodes: its steps and epoch hooks per node, its logs reduced over nodes.

:class:`~lightning_mosaic.MosaicModule` holds the user's module as the template of its replicas and calls this
module's :class:`LightningNodes` for every step. Each node runs the user's unchanged ``training_step``,
``validation_step`` and ``test_step`` with that node's parameters, buffers, metric objects and plain attributes
(:meth:`~lightning_mosaic.replicas.ReplicaStack.call_node`). What the user logs with ``self.log`` is captured per
node and logged once, reduced over the nodes (names in :class:`LightningNodes`).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import math
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from lightning_mosaic.distributed.sharding import all_reduce_sum
from lightning_mosaic.metrics import metric_scalar, own_copy

NODE_STD_SUFFIX = "/node_std"
"""Appended to a name the user logs: the population std over nodes of the per-node values."""
AVG_MODEL_SUFFIX = "/avg_model"
"""Appended to a name the user logs in evaluation: the value of the averaged model ``x_bar``."""

EPOCH_HOOKS = {
    "train": ("on_train_epoch_start", "on_train_epoch_end"),
    "val": ("on_validation_epoch_start", "on_validation_epoch_end"),
    "test": ("on_test_epoch_start", "on_test_epoch_end"),
}
"""The user's epoch hooks per stage, run once per node (and, in evaluation, for the averaged model) with that node's
metrics and attributes."""

STEP_HOOKS = {"train": "training_step", "val": "validation_step", "test": "test_step"}

IGNORED_HOOKS = (
    "setup",
    "configure_model",
    "configure_callbacks",
    "on_fit_start",
    "on_fit_end",
    "on_train_start",
    "on_train_end",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_save_checkpoint",
    "on_load_checkpoint",
    "transfer_batch_to_device",
    "on_before_batch_transfer",
    "on_after_batch_transfer",
    "optimizer_step",
    "optimizer_zero_grad",
    "lr_scheduler_step",
    "configure_gradient_clipping",
    "backward",
    "on_validation_start",
    "on_validation_end",
    "on_test_start",
    "on_test_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_start",
    "on_predict_end",
    "on_predict_epoch_start",
    "on_predict_epoch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
    "on_validation_model_eval",
    "on_validation_model_train",
    "on_test_model_eval",
    "on_test_model_train",
    "on_predict_model_eval",
    "train_dataloader",
    "val_dataloader",
    "test_dataloader",
)
"""Hooks of a user's module that :class:`~lightning_mosaic.MosaicModule` never calls (it warns about the ones a
module overrides)."""

AVERAGE = "average"
"""Key of the averaged model's slot, next to the node rows 0..m-1."""


def is_lightning_module(model: Any) -> bool:
    """Whether ``model`` is a ``LightningModule`` instance or subclass."""
    return isinstance(model, LightningModule) or (isinstance(model, type) and issubclass(model, LightningModule))


def ignored_hooks(module: LightningModule) -> list[str]:
    """The hooks of :data:`IGNORED_HOOKS` that ``module`` overrides."""
    return [name for name in IGNORED_HOOKS if is_overridden(name, module, parent=LightningModule)]


def step_loss(output: Any, hook: str) -> Tensor:
    """The loss a user's ``training_step`` returned: a scalar tensor, or a mapping's ``"loss"``.

    Raises:
        ValueError: If the step returned ``None`` (skipping a node's step is not supported), a mapping without
            ``"loss"``, or a tensor that is not a scalar.
    """
    loss = output.get("loss") if isinstance(output, Mapping) else output
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        if loss is None:
            what = "None"
        elif isinstance(loss, Tensor):
            what = f"a tensor of shape {tuple(loss.shape)}"
        else:
            what = type(loss).__name__
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


class _Record:
    """One logged name of one stage: per-slot weighted sums over the epoch and over the current step, or metric
    objects, and the user's options."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.total: dict[Any, float] = {}
        self.weight: dict[Any, float] = {}
        self.step_total: dict[Any, float] = {}
        self.step_weight: dict[Any, float] = {}
        self.metrics: dict[Any, Metric | MetricCollection] = {}
        self.stepped = False  # logged from training_step (its node mean already went to Lightning every step)

    @property
    def sums(self) -> bool:
        return self.options.get("reduce_fx", "mean") in ("sum", torch.sum)

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
        weight = 1.0 if self.sums else weight
        number = _as_float(value, name) * weight
        for total, weights in ((self.total, self.weight), (self.step_total, self.step_weight)):
            total[slot] = total.get(slot, 0.0) + number
            weights[slot] = weights.get(slot, 0.0) + weight

    def value(self, slot: Any, name: str) -> float | None:
        if slot in self.metrics:
            computed = self.metrics[slot].compute()
            if isinstance(computed, Mapping):
                return None
            return metric_scalar(computed, f"the metric logged as {name!r}")
        if slot not in self.total:
            return None
        return self.total[slot] if self.sums else self.total[slot] / max(self.weight[slot], 1e-300)


def _plain_state(module: nn.Module) -> dict[str, Any]:
    """The user's own attributes of a module: public ``__dict__`` entries (lists of step outputs, a kept hidden
    state, counters, ...), not parameters, buffers, submodules or Lightning's and torch's private fields."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"}


def _fresh(value: Any) -> Any:
    """A node's own copy of an attribute: containers, arrays and tensors are copied, other objects are shared."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, (list, dict, set, collections.deque, np.ndarray)):
        return copy.deepcopy(value)
    return value


class LightningNodes:
    """Runs a user's ``LightningModule`` (the template of a :class:`~lightning_mosaic.replicas.ReplicaStack`) as
    this process's nodes.

    Per node, with that node's parameters, buffers, its own copy of every torchmetrics ``Metric`` (or
    ``MetricCollection``) attribute and of every plain attribute of the module (e.g. a list of step outputs, a kept
    hidden state: lists, dicts, sets, deques, NumPy arrays and tensors are copied per node; other objects, and the
    attributes of its submodules, are shared; none of them is saved in checkpoints):
    ``training_step`` (node batch ``batch[i]``), ``validation_step`` and ``test_step`` (the shared evaluation
    batch; the averaged model runs them too), and the epoch hooks of :data:`EPOCH_HOOKS`. The hooks of
    :data:`IGNORED_HOOKS` are not called; ``configure_optimizers`` is called once and its optimizer rebound to the
    ``(n, d)`` rows by :class:`~lightning_mosaic.MosaicModule`.

    What the user logs (``self.log`` / ``self.log_dict``, with a number, a tensor or a Metric) is captured per
    node and stage; then, under the user's name ``name``:

    - ``name``: the mean over all n nodes of the per-node values (so ``ModelCheckpoint(monitor=name)``,
      ``EarlyStopping`` and ``ReduceLROnPlateau`` see the node average);
    - ``name/node_std``: the population std over nodes;
    - ``name/avg_model`` (evaluation only): the value of the averaged model ``x_bar``.

    In evaluation, a value logged in a step is reduced over the epoch's batches per node first (mean weighted by
    batch size, or sum with ``reduce_fx="sum"``), and a Metric object is computed per node at the epoch's end and
    reset. In training, a number logged in ``training_step`` is logged every step as the mean over the nodes that
    logged it, over all n nodes (gathered from every process in a multi-process run), with the user's
    ``on_step``/``on_epoch`` options (Lightning then reduces it over the epoch as usual); its ``name/node_std`` is
    the std over those nodes of that step's values, or, when logged ``on_epoch``, the std over nodes of the
    per-node epoch means (logged at the epoch's end); a Metric object is computed per node at the end of the
    training epoch.

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
        slots: list[Any] = [*range(num_local), AVERAGE]
        self.node_metrics = nn.ModuleList(
            nn.ModuleDict({path.replace(".", "__"): own_copy(_get(module, path)) for path in self.metric_paths})
            for _ in slots
        )
        """Every slot's metric copies (rows 0..m-1, then the averaged model), registered by the module that holds
        this object so that they follow its device."""
        initial = _plain_state(module)
        self._states: list[dict[str, Any]] = [{k: _fresh(v) for k, v in initial.items()} for _ in slots]
        self._seen: dict[str, Any] = dict(initial)  # the template's attributes the node copies were made from
        self._slots = {slot: index for index, slot in enumerate(slots)}
        self._records: dict[str, dict[str, _Record]] = {stage: {} for stage in STEP_HOOKS}
        self._capturing: tuple[Any, int, str] | None = None

    def refresh(self) -> None:
        """Give every node a fresh copy of each attribute set on the user's module since the copies were made
        (e.g. ``model.temperature = 100`` between ``fit`` and ``test``); the nodes keep their own values of the
        others. MosaicModule calls it at the start of every fit, validation, test and prediction."""
        for key, value in _plain_state(self.module).items():
            if key not in self._seen or self._seen[key] is not value:
                for state in self._states:
                    state[key] = _fresh(value)
                self._seen[key] = value

    # -- capture ------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def node(self, slot: Any, stage: str, batch_size: int = 1) -> Iterator[None]:
        """Within the block, the user's module logs into ``slot`` (a row, or :data:`AVERAGE`) of ``stage``
        (``"train"``, ``"val"``, ``"test"``) and uses that slot's metric objects and plain attributes."""
        module, index = self.module, self._slots[slot]
        originals = {path: _get(module, path) for path in self.metric_paths}
        copies = self.node_metrics[index]
        for path in self.metric_paths:
            _set(module, path, copies[path.replace(".", "__")])
        template_state = _plain_state(module)
        for key in template_state:
            del module.__dict__[key]
        module.__dict__.update(self._states[index])
        self._capturing = (slot, batch_size, stage)
        module.log = self._log  # type: ignore[method-assign]  # the instance's log; log_dict calls it too
        try:
            yield
        finally:
            del module.log
            self._capturing = None
            self._states[index] = _plain_state(module)
            for key in self._states[index]:
                del module.__dict__[key]
            module.__dict__.update(template_state)
            for path, original in originals.items():
                _set(module, path, original)

    def _log(self, name: str, value: Any, **options: Any) -> None:
        assert self._capturing is not None
        slot, batch_size, stage = self._capturing
        records = self._records[stage]
        record = records.get(name)
        if record is None:
            record = records[name] = _Record(options)
        record.add(slot, value, float(options.get("batch_size") or batch_size), name)

    def logged(self, stage: str) -> set[str]:
        """The names logged in ``stage`` since its last :meth:`epoch_values`."""
        return set(self._records[stage])

    # -- reductions ---------------------------------------------------------------------------------------------

    def step_values(self) -> dict[str, tuple[list[float], list[int], dict[str, Any]]]:
        """After a training step: every number this step's nodes logged, as ``(values, rows, options)``: the value
        of each of this process's rows (``0 .. m-1``, ascending) that logged it this step (a node that skipped the
        step logged nothing). The module reduces them over all n nodes. Metric objects and epoch sums stay until
        :meth:`epoch_values`."""
        out = {}
        for name, record in self._records["train"].items():
            if not record.step_total:
                continue
            rows = sorted(record.step_total)
            divisors = [1.0 if record.sums else max(record.step_weight[r], 1e-300) for r in rows]
            values = [record.step_total[r] / divisor for r, divisor in zip(rows, divisors)]
            out[name] = (values, rows, record.options)
            record.step_total.clear()
            record.step_weight.clear()
            record.stepped = True
        return out

    def epoch_values(self, stage: str, with_average: bool, device: torch.device) -> dict[str, Tensor]:
        """At the end of ``stage``'s epoch: every name captured in it, reduced per node over the epoch, then over
        all n nodes (a collective per name in multi-process runs: every process logged the same names). In
        training only Metric objects and names logged ``on_epoch`` (their std; their mean Lightning reduces). Clears
        the stage's records and resets the metric objects it logged."""
        out: dict[str, Tensor] = {}
        records = self._records[stage]
        for name in sorted(records):
            record = records[name]
            # A number logged in training_step: Lightning reduced its node mean over the steps; only its std over
            # the per-node epoch means is left (if logged on_epoch). Logged in an epoch hook: mean and std here.
            epoch_number = not record.metrics and stage == "train" and record.stepped
            if epoch_number and not record.options.get("on_epoch", False):
                continue
            per_node = torch.zeros(self.num_nodes, dtype=torch.float64, device=device)
            average = torch.zeros(2, dtype=torch.float64, device=device)  # (value, present)
            for row in range(self.num_local):
                value = record.value(row, name)
                per_node[self.first_node + row] = math.nan if value is None else value
            if with_average and (value := record.value(AVERAGE, name)) is not None:
                average[0], average[1] = value, 1.0
            if self.sharded:
                per_node, average = all_reduce_sum(per_node), all_reduce_sum(average)
            if not epoch_number:
                out[name] = per_node.mean()
            out[name + NODE_STD_SUFFIX] = per_node.std(correction=0)
            if float(average[1]) > 0:
                out[name + AVG_MODEL_SUFFIX] = average[0] / average[1]
            for metric in record.metrics.values():
                metric.reset()
        records.clear()
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
