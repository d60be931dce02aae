"""``MosaicModule``: n decentralized nodes, each a replica of one model, trained in one LightningModule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import Metric

from lightning_mosaic._validation import check_int
from lightning_mosaic.distributed.strategy import check_single_process_checkpoint, local_nodes
from lightning_mosaic.metrics import ConsensusDistance, NodeMean
from lightning_mosaic.replicas import EXECUTIONS, ReplicaStack, default_execution

DEFAULT_LR = 0.05
"""SGD learning rate used when no optimizer is configured (EL's CIFAR-10 setting in decentralizepy)."""


class MosaicModule(LightningModule):
    """n nodes of decentralized learning, each a replica of ``model``, trained together by one Trainer.

    Node parameters live in one ``(n, d)`` buffer (:class:`~lightning_mosaic.replicas.ReplicaStack`); add
    :class:`~lightning_mosaic.callbacks.MosaicGossip` to the Trainer's callbacks to gossip them. A training batch is
    ``(x, y)`` with ``x`` shaped ``(n, B, ...)`` and ``y`` ``(n, B)``: one mini-batch per node. The training loss is
    the *sum* of the n per-node mean losses, so node i's gradient is exactly the gradient of its own loss on its own
    data (never divided by n). Validation and test batches ``(x: (B, ...), y: (B,))`` come from the test set shared
    by all nodes; every node and the averaged model are evaluated on them.

    Logged at validation (``val/``) and test (``test/``): ``node_acc_mean``, ``node_acc_std`` (population std over
    nodes), ``avg_model_acc`` (accuracy of ``x_bar = mean_i x_i``), ``loss`` (node-average test loss), and
    ``gossip/consensus_distance``. Logged every training step: ``train/loss`` (node-average training loss).

    Args:
        model: The per-node model: a zero-argument callable returning an ``nn.Module`` (a class, or a
            ``class_path`` in YAML) or an ``nn.Module`` instance used as template.
        num_nodes: n >= 2, the number of simulated nodes.
        optimizer: Callable ``params -> Optimizer`` (``LightningCLI``'s ``OptimizerCallable``). Default: SGD with
            lr 0.05. It must act coordinate-wise (SGD, Adam, AdamW, RMSprop, Adagrad, ...): one such optimizer on the
            ``(n, d)`` buffer is n independent per-node optimizers. LBFGS is refused.
        lr_scheduler: Optional callable ``optimizer -> LRScheduler``, stepped every ``lr_scheduler_interval``.
        lr_scheduler_interval: ``"step"`` (every optimizer step, i.e. local step; default) or ``"epoch"``.
        init: ``"same"`` (every node starts from the same weights, default) or ``"independent"``.
        execution: ``"auto"`` (per device and model, see :func:`~lightning_mosaic.replicas.default_execution`),
            ``"vmap"`` or
            ``"loop"``. Both paths compute the same numbers.
        seed: Seed of the model initialization.

    Gradient clipping (``Trainer(gradient_clip_val=...)``) is applied per node: with ``"norm"`` each node's gradient
    row is rescaled to at most the given L2 norm; ``"value"`` clamps elementwise.

    Multi-process runs (``Trainer(strategy="mosaic", devices=w)``, see
    :class:`~lightning_mosaic.distributed.MosaicStrategy`): at ``setup`` rank r keeps only nodes
    ``[floor(r n / w), floor((r + 1) n / w))`` (:attr:`local_nodes`), the datamodule feeds it those nodes' batches,
    and every evaluation metric is computed over all n nodes, equal to the single-process value; ``train/loss`` is
    the mean over the process's own nodes (no collective in the training step).

    Raises:
        ValueError: If ``num_nodes`` < 2, ``execution`` or ``init`` or ``lr_scheduler_interval`` is unknown, or a
            batch is not shaped ``(n, B, ...)``.
    """

    def __init__(
        self,
        model: Callable[[], nn.Module] | nn.Module,
        num_nodes: int,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["step", "epoch"] = "step",
        init: Literal["same", "independent"] = "same",
        execution: Literal["auto", "vmap", "loop"] = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_int("num_nodes", num_nodes, 2)
        check_int("seed", seed, 0)
        if execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
        if lr_scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"lr_scheduler_interval must be 'step' or 'epoch', got {lr_scheduler_interval!r}")
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler"])
        self.num_nodes = num_nodes
        self.execution = execution
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        self.replicas = ReplicaStack(model, num_nodes, init=init, seed=seed)
        self._average_state: dict[str, Tensor] | None = None
        self.idle_nodes: Tensor | None = None
        """``(m,)`` bool mask of this process's nodes that skip the current local step (set by
        :class:`~lightning_mosaic.callbacks.MosaicGossip`'s fault model), or ``None``."""
        self.last_validated_step = -1
        """``trainer.global_step`` of the last completed validation (-1: none yet)."""
        self._consensus_distance = ConsensusDistance()
        """Consensus distance of rows of :attr:`gossip_parameters` (its float64 workspace, ``8 m d`` bytes once
        used, is shared with :class:`~lightning_mosaic.callbacks.MosaicGossip`)."""
        self._after_train_batch: Callable[[], None] | None = None
        """Set by :class:`~lightning_mosaic.callbacks.MosaicGossip` in its ``on_train_batch_end``: its round's logging,
        run by :meth:`on_train_batch_end` (after every callback's, when the step's logging decision is final)."""
        self.eval_metrics = nn.ModuleDict(
            {stage: nn.ModuleDict(self._make_eval_metrics()) for stage in ("val", "test")}
        )

    # -- what MosaicGossip works on -------------------------------------------------------------------------------

    @property
    def gossip_parameters(self) -> Tensor:
        """The ``(n, d)`` parameter buffer, row i = node i; gossip mixes it in place."""
        return self.replicas.flat

    @property
    def local_nodes(self) -> range:
        """The nodes this process trains: all n in one process, this rank's block in a multi-process run."""
        first = self.replicas.first_node
        return range(first, first + self.replicas.num_nodes)

    @property
    def sharded(self) -> bool:
        """Whether this process holds only some of the n nodes (multi-process run)."""
        return self.replicas.num_nodes < self.num_nodes

    @property
    def parameter_sizes(self) -> list[int]:
        """Element counts of the model's trainable tensors in ``named_parameters()`` order (sum = d)."""
        return list(self.replicas.sizes)

    def node_state_dict(self, node: int) -> dict[str, Tensor]:
        """A copy of node ``node``'s model as a plain ``state_dict`` loadable into ``model()``.

        Raises:
            IndexError: If ``node`` is not in [0, n), or (multi-process run) not one of this process's nodes.
        """
        if node not in self.local_nodes:
            nodes = self.local_nodes
            where = "" if not self.sharded else f" held by this process ({nodes.start}..{nodes.stop - 1})"
            raise IndexError(f"node must be one of the nodes in [0, {self.num_nodes}){where}, got {node}")
        row = node - self.replicas.first_node
        return {name: t.detach().clone() for name, t in self.replicas.node_state(row).items()}

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        data_nodes = getattr(datamodule, "num_nodes", None)
        if data_nodes is not None and data_nodes != self.num_nodes:
            raise ValueError(
                f"the datamodule {type(datamodule).__name__} splits the data over num_nodes={data_nodes} nodes but "
                f"the MosaicModule has num_nodes={self.num_nodes}; use the same n for both"
            )
        nodes = local_nodes(self.trainer, self.num_nodes)  # refuses several processes without MosaicStrategy
        if len(nodes) < self.num_nodes and not self.sharded:
            self.replicas.shard(nodes.start, nodes.stop)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another shape: n nodes of d parameters each must match.

        Raises:
            ValueError: Naming the checkpoint's and this module's n and d, or the number of processes that wrote a
                multi-process checkpoint loaded in one process.
        """
        check_single_process_checkpoint(checkpoint)
        saved = checkpoint.get("state_dict", {}).get("replicas.flat")
        if saved is not None and tuple(saved.shape) != tuple(self.replicas.flat.shape):
            (n, d), (sn, sd) = self.replicas.flat.shape, saved.shape
            saved_n = checkpoint.get("hyper_parameters", {}).get("num_nodes", sn)
            theirs = "" if sn == saved_n else f" ({sn} in this process's part)"
            ours = "" if n == self.num_nodes else f" ({n} in this process)"
            raise ValueError(
                f"the checkpoint holds n={saved_n} nodes{theirs} of d={sd} parameters, this MosaicModule has "
                f"n={self.num_nodes} nodes{ours} of d={d} parameters; resume with the same num_nodes and model"
            )

    # -- computation ----------------------------------------------------------------------------------------------

    def resolved_execution(self) -> str:
        """The execution path in use on the module's current device."""
        return default_execution(self.device, self.replicas.template) if self.execution == "auto" else self.execution

    def forward(self, x: Tensor, shared_input: bool = False) -> Tensor:
        """All nodes' outputs: ``x`` ``(n, B, ...)`` -> ``(n, B, C)``; with ``shared_input``, ``(B, ...)`` -> same."""
        return self.replicas(x, execution=self.resolved_execution(), shared_input=shared_input)

    def per_sample_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy per node and sample: outputs ``(n, B, C)``, targets ``(n, B)`` -> ``(n, B)``.

        Override for other tasks (e.g. regression)."""
        n, b = targets.shape
        return F.cross_entropy(outputs.reshape(n * b, -1), targets.reshape(-1), reduction="none").view(n, b)

    def per_sample_correct(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """1.0 where the prediction is right: outputs ``(n, B, C)``, targets ``(n, B)`` -> ``(n, B)``."""
        return (outputs.argmax(dim=-1) == targets).to(torch.float32)

    def _split_batch(self, batch: Any) -> tuple[Tensor, Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"batch must be a pair (inputs, targets), got {type(batch).__name__}")
        return batch[0], batch[1]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = self._split_batch(batch)
        m = self.replicas.num_nodes
        if x.dim() < 2 or x.shape[0] != m or y.shape[:1] != x.shape[:1]:
            where = f"num_nodes = {m}" if not self.sharded else f"this process's nodes = {m} of {self.num_nodes}"
            raise ValueError(
                f"training batch must be shaped (n, B, ...) with n = {where}, got inputs "
                f"{tuple(x.shape)} and targets {tuple(y.shape)}"
            )
        node_loss = self.per_sample_loss(self(x), y).mean(dim=1)  # (m,)
        # Over this process's nodes: no collective in the training step (all n nodes in a single process).
        self.log("train/loss", node_loss.detach().mean(), prog_bar=True)
        return node_loss.sum()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Run what :class:`~lightning_mosaic.callbacks.MosaicGossip` left for after every callback's
        ``on_train_batch_end`` (its round's metrics). A subclass overriding this hook without calling it makes the
        callback log at its own hook instead."""
        pending, self._after_train_batch = self._after_train_batch, None
        if pending is not None:
            pending()

    # -- evaluation: override the three _..._eval_... hooks for a task's own metrics (see tasks/rating.py) ----------

    def _make_eval_metrics(self) -> dict[str, Metric]:
        """Fresh metrics of one evaluation stage, by name (called once per stage by ``__init__``)."""
        return {"node_acc": NodeMean(self.num_nodes), "node_loss": NodeMean(self.num_nodes), "avg_acc": NodeMean(1)}

    def _update_eval_metrics(
        self, metrics: nn.ModuleDict, outputs: Tensor, avg_outputs: Tensor | None, y: Tensor, first_node: int = 0
    ) -> None:
        """Add one batch: outputs ``(m, B, ...)`` of nodes ``first_node, ..., first_node + m - 1`` (all n in one
        process), averaged-model outputs ``(1, B, ...)`` (``None`` in the processes that do not evaluate it), targets
        ``(B,)``."""
        targets = y.unsqueeze(0).expand(outputs.shape[0], -1)
        metrics["node_acc"].update(self.per_sample_correct(outputs, targets), first_node)
        metrics["node_loss"].update(self.per_sample_loss(outputs, targets), first_node)
        if avg_outputs is not None:
            metrics["avg_acc"].update(self.per_sample_correct(avg_outputs, y.unsqueeze(0)))

    def _compute_eval_metrics(self, metrics: nn.ModuleDict, stage: str) -> dict[str, Tensor]:
        """The values to log at the end of a stage, by logged name."""
        node_acc = metrics["node_acc"].compute()
        return {
            f"{stage}/node_acc_mean": node_acc.mean(),
            f"{stage}/node_acc_std": node_acc.std(correction=0),
            f"{stage}/avg_model_acc": metrics["avg_acc"].compute().mean(),
            f"{stage}/loss": metrics["node_loss"].compute().mean(),
        }

    def _eval_step(self, batch: Any, stage: str) -> None:
        x, y = self._split_batch(batch)
        outputs = self(x, shared_input=True)  # (m, B, ...)
        first = self.replicas.first_node
        # the averaged model is evaluated once, by the process holding node 0
        avg = self.replicas.forward_average(x, self._average_state).unsqueeze(0) if first == 0 else None
        self._update_eval_metrics(self.eval_metrics[stage], outputs, avg, y, first)

    def _eval_epoch_start(self) -> None:
        self._average_state = self.replicas.average_state()  # a collective in multi-process runs

    def _eval_epoch_end(self, stage: str) -> None:
        metrics = self.eval_metrics[stage]
        values = self._compute_eval_metrics(metrics, stage)
        values["gossip/consensus_distance"] = self._consensus_distance(self.replicas.flat, self.num_nodes)
        # Every value is already over all n nodes and equal on every process: "max" of equal copies is exact.
        self.log_dict(
            {k: v.to(torch.float32) for k, v in values.items()}, prog_bar=False, sync_dist=self.sharded, reduce_fx="max"
        )
        self._average_state = None
        if stage == "val":
            self.last_validated_step = self.global_step
        for metric in metrics.values():
            metric.reset()

    def on_validation_epoch_start(self) -> None:
        self._eval_epoch_start()

    def on_test_epoch_start(self) -> None:
        self._eval_epoch_start()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # -- optimization ---------------------------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            optimizer: Optimizer = torch.optim.SGD(self.parameters(), lr=DEFAULT_LR)
        else:
            optimizer = self.optimizer_factory(self.parameters())
        if isinstance(optimizer, torch.optim.LBFGS):
            raise ValueError(
                "optimizer LBFGS is not coordinate-wise: one LBFGS on the (n, d) buffer would couple the nodes; "
                "use SGD, Adam, AdamW, RMSprop or Adagrad"
            )
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_scheduler_interval},
        }

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Step the optimizer; nodes in :attr:`idle_nodes` (set by a fault model for this step) keep their parameters
        and per-coordinate optimizer state as they were (they skip the local step)."""
        idle = self.idle_nodes
        if idle is None or not bool(idle.any()):
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
            return
        rows = idle.to(self.replicas.flat.device).nonzero().flatten()
        flat = self.replicas.flat
        inner = getattr(optimizer, "optimizer", optimizer)
        state = inner.state.get(flat, {})
        saved = flat.data[rows].clone()
        saved_state = {k: v[rows].clone() for k, v in state.items() if torch.is_tensor(v) and v.shape == flat.shape}
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        flat.data[rows] = saved
        state = inner.state.get(flat, {})
        for key, value in saved_state.items():
            state[key][rows] = value

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip each node's gradient separately (rows of the ``(n, d)`` gradient)."""
        if gradient_clip_val is None or gradient_clip_val <= 0:
            return
        grad = self.replicas.flat.grad
        if grad is None:
            return
        if gradient_clip_algorithm in (None, "norm"):
            norms = grad.norm(dim=1, keepdim=True)
            grad.mul_((gradient_clip_val / (norms + 1e-6)).clamp(max=1.0))
        elif gradient_clip_algorithm == "value":
            grad.clamp_(-gradient_clip_val, gradient_clip_val)
        else:
            raise ValueError(f"gradient_clip_algorithm must be 'norm' or 'value', got {gradient_clip_algorithm!r}")
