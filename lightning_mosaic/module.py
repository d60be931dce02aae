"""``MosaicModule``: n decentralized nodes, each a replica of one model, trained in one LightningModule."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn
from torch.func import vmap
from torch.optim import Optimizer
from torch.utils.data import DataLoader
from torchmetrics import Metric, MetricCollection

from lightning_mosaic._validation import check_int
from lightning_mosaic.distributed.diagnosis import diagnosed
from lightning_mosaic.distributed.sharding import (
    all_gather_objects,
    all_node_values,
    broadcast_first_row_,
    global_consensus_distance,
)
from lightning_mosaic.distributed.strategy import check_single_process_checkpoint, local_nodes
from lightning_mosaic.metrics import NodeMean, PerNodeMetric
from lightning_mosaic.node_module import (
    AVERAGE,
    EPOCH_HOOKS,
    STEP_HOOKS,
    LightningNodes,
    ignored_hooks,
    is_lightning_module,
    step_loss,
)
from lightning_mosaic.replicas import (
    EXECUTIONS,
    ReplicaStack,
    default_execution,
    node_batch_size,
    select_node,
    tensor_shapes,
)

DEFAULT_ACTIVATION_BUDGET = 512 * 2**20
"""Bytes of saved activations one backward chunk may hold on the vmap path with ``backward_chunk="auto"`` off CUDA
(on CUDA the default is a quarter of the device's free memory when the chunk is chosen)."""

CHUNK_GRADIENT_BYTES = 16 * 2**20
"""Off CUDA, the most bytes of parameter gradient (``c * d * element size``) one vmap chunk of
``backward_chunk="auto"`` makes. The vectorized backward builds a chunk's gradient in fresh ``(c, ...)`` tensors
(one per parameter tensor, then their ``(c, d)`` concatenation), and a batching rule may copy the chunk's strided
parameter views to contiguous ones (``F.embedding``'s does): up to glibc's mmap threshold (32 MiB at most) such
tensors reuse memory the process holds, while larger ones are fresh mappings whose every 4 KiB page faults on its
first write (a fresh 208 MB tensor: 88 ms to zero, an existing one 6 ms; matrix factorization on MovieLens 100K at
n = 943: 0.50 s of CPU per round in one chunk of 943 nodes, 0.36 s in chunks of 76). CUDA's caching allocator
reuses its blocks, so there the activation budget alone sets the chunk."""

BackwardChunk = int | Literal["auto", "all"]

DEFAULT_LR = 0.05
"""SGD learning rate used when no optimizer is configured (EL's CIFAR-10 setting in decentralizepy)."""

IGNORE_INDEX = -100
"""Class index the default loss and accuracy leave out (padding), as ``F.cross_entropy``'s ``ignore_index``."""

Loss = Callable[[Any, Any], Tensor]


def _describe(collection: Any) -> str:
    if isinstance(collection, Tensor):
        return f"a tensor of shape {tuple(collection.shape)}"
    return (
        f"{type(collection).__name__} of tensors shaped {', '.join(str(s) for s in tensor_shapes(collection)) or '-'}"
    )


class MosaicModule(LightningModule):
    """n nodes of decentralized learning, each a replica of ``model``, trained together by one Trainer.

    Node parameters live in one ``(n, d)`` buffer (:class:`~lightning_mosaic.replicas.ReplicaStack`); add
    :class:`~lightning_mosaic.callbacks.MosaicGossip` to the Trainer's callbacks to gossip them. One training batch
    holds one mini-batch per node: every tensor in it is shaped ``(n, B, ...)`` (what
    :class:`~lightning_mosaic.data.NodeDataModule` yields). Node i's gradient is exactly the gradient of its own
    loss on its own data: the loss back-propagated is the *sum* of the n per-node losses (never divided by n).
    Validation and test batches ``(B, ...)`` come from the test set shared by all nodes; every node and the
    averaged model ``x_bar = (1/n) sum_i x_i`` are evaluated on them.

    **Your nn.Module** (``model`` a module, a class or a zero-argument factory). A batch is a tuple or list
    ``(input_1, ..., input_k, target)`` (override :meth:`split_batch` for other layouts, e.g. dicts); node i runs
    ``model(input_1[i], ..., input_k[i])``, whose output may be a tensor, a tuple or a dict.

    - ``loss=None`` (default): classification, cross-entropy of outputs ``(B, ..., C)`` against class indices
      ``(B, ...)`` (per sample or per token, :meth:`per_sample_loss`), and accuracy (:meth:`per_sample_correct`).
      ``loss=`` any callable ``(output, target) -> scalar`` of one node's batch (e.g. ``nn.MSELoss()``),
      applied to every node with ``torch.func.vmap`` (a per-node loop if the loss cannot be vmapped).
    - ``metrics``: torchmetrics objects by name, ``{"f1": MulticlassF1Score(10)}`` (or a ``MetricCollection``);
      each node and the averaged model get their own copy, updated with ``(output, target)``.

    **Your LightningModule** (``model`` a ``LightningModule`` instance or class): its ``training_step``,
    ``validation_step``, ``test_step`` and epoch-end hooks run unchanged for every node with that node's
    parameters, buffers, metric objects and batch; its ``configure_optimizers`` is honoured (one optimizer on
    the ``(n, d)`` buffer: per node, coordinate-wise, with the LR scheduler the module returns). What it logs as
    ``name`` is logged as the node mean ``name``, ``name/node_std`` and, in evaluation, ``name/avg_model``
    (:class:`~lightning_mosaic.node_module.LightningNodes`). Its steps run per node (``execution="loop"``);
    manual optimization is not supported. ``optimizer``, ``lr_scheduler``, ``loss`` and ``metrics`` must then be
    left unset.

    Evaluation runs every node and the averaged model in eval mode (Lightning's ``model.eval()`` reaches every
    replica): no dropout, normalization layers use their running statistics, and no buffer of any node changes, so
    a node exported with :meth:`node_state_dict` and put in eval mode gives exactly the outputs that were
    evaluated. Buffers such as BatchNorm's running statistics are per node and never gossiped: node i's are
    updated by node i's training steps only. The averaged model uses the mean over nodes of every floating-point
    buffer (running mean and variance; integer buffers such as ``num_batches_tracked`` are node 0's).

    Logged at validation (``val/``) and test (``test/``) with an nn.Module: ``loss`` (node mean of the test
    loss), ``node_acc_mean``, ``node_acc_std`` (population std over nodes), ``avg_model_acc`` (classification
    default), for every entry ``name`` of ``metrics``: ``node_{name}_mean``, ``node_{name}_std``,
    ``avg_model_{name}``; and ``gossip/consensus_distance``. Logged every training step: ``train/loss`` (mean
    over this process's nodes).

    Args:
        model: The per-node model: an ``nn.Module`` instance (the template; with ``init="same"`` its weights are
            every node's start), a class or zero-argument callable returning one (a ``class_path`` in YAML), or a
            ``LightningModule`` (instance or class).
        num_nodes: n >= 2, the number of simulated nodes.
        optimizer: Callable ``params -> Optimizer`` (``LightningCLI``'s ``OptimizerCallable``). Default: SGD with
            lr 0.05. It must act coordinate-wise (SGD, Adam, AdamW, RMSprop, Adagrad, ...): one such optimizer on the
            ``(n, d)`` buffer is n independent per-node optimizers. LBFGS is refused.
        lr_scheduler: Optional callable ``optimizer -> LRScheduler``, stepped every ``lr_scheduler_interval``.
        lr_scheduler_interval: ``"step"`` (every optimizer step, i.e. local step; default) or ``"epoch"``.
        init: ``"same"`` (every node starts from the same weights, default) or ``"independent"``.
        execution: ``"auto"`` (per device and model, see :func:`~lightning_mosaic.replicas.default_execution`;
            always ``"loop"`` for a LightningModule), ``"vmap"`` or ``"loop"``. Both paths compute the same
            function, to float rounding; random layers (dropout) draw other masks on each.
        seed: Seed of the model initialization.
        loss: One node's loss ``(output, target) -> scalar tensor``; default: cross-entropy (see above).
        metrics: torchmetrics metrics by name (or a ``MetricCollection``), computed per node and for the averaged
            model, in addition to the loss (and, with the default loss, accuracy).
        backward_chunk: How many nodes run their forward pass and backward pass together in a training step, so
            that only one chunk's activations are alive at a time. ``"auto"`` (default): 1 on the loop path (and
            for a wrapped LightningModule); on the vmap path ``clamp(activation_budget // a, 1, m)``, where ``a`` is
            the bytes autograd saves for one node's backward, measured on the first training step's first chunk
            (one node) and kept for the fit, and off CUDA at most :data:`CHUNK_GRADIENT_BYTES` ``// (d * element
            size)`` nodes (the bytes of the chunk's gradient, see there). An int c >= 1: chunks of c nodes (the last
            one smaller when c does not divide m). ``"all"``: one backward of the summed loss after every node's
            forward (every node's activations alive at once). Every setting gives the same gradients: bit for bit on
            the loop path (a node's loss only reaches its own row), to float rounding on the vmap path (other batch
            sizes of the vectorized kernels) for a model without random layers; under vmap, a random layer (Dropout)
            draws its masks per vmapped call, so other chunks draw other masks (on the loop path they are the same).
            The chunks run inside ``training_step`` (see "Backward per chunk" below).
        activation_budget: Bytes of saved activations one chunk may hold when ``backward_chunk="auto"`` picks the
            vmap chunk; ``None`` (default): a quarter of the CUDA device's free memory on CUDA,
            :data:`DEFAULT_ACTIVATION_BUDGET` (512 MiB) elsewhere.

    **Backward per chunk** (``backward_chunk`` other than ``"all"``, inside a Trainer's automatic optimization):
    ``training_step`` runs, chunk by chunk, the forward pass, the loss and ``torch.autograd.grad`` of the chunk's
    summed loss times the factor Lightning's own backward would apply (``1 / trainer.accumulate_grad_batches``,
    then the precision plugin's ``scaler`` if it has one, e.g. 16-mixed), with autocast off as in Lightning's
    backward, and adds each chunk's ``(c, d)`` gradient to its rows of ``replicas.flat.grad``. On the first batch
    of every accumulation window (``batch_idx % accumulate_grad_batches == 0``, where Lightning zeroes gradients)
    the chunks' gradients overwrite ``replicas.flat.grad`` instead: the same tensor from step to step (as
    ``zero_grad(set_to_none=False)`` keeps it) unless it is missing or of another shape, dtype or device, so clone
    it to keep one step's gradient; :meth:`optimizer_zero_grad` and :meth:`backward` then do nothing
    for that step, because the gradients are already there. It returns the (detached) sum of the node losses, so
    Lightning's loop, its loss logging, ``on_before_backward`` / ``on_after_backward`` (once per step) and gradient
    clipping (the whole ``(m, d)`` gradient, after every chunk) see what they saw with the joint backward;
    ``on_before_zero_grad`` runs after the step's gradients exist. Called without a Trainer, ``training_step``
    returns the loss with its graph (the joint backward).

    Gradient clipping (``Trainer(gradient_clip_val=...)``) is applied per node: with ``"norm"`` each node's gradient
    row is rescaled to at most the given L2 norm; ``"value"`` clamps elementwise.

    Multi-process runs (``Trainer(strategy="mosaic", devices=w)``, see
    :class:`~lightning_mosaic.distributed.MosaicStrategy`): at ``setup`` rank r keeps only nodes
    ``[floor(r n / w), floor((r + 1) n / w))`` (:attr:`local_nodes`), the datamodule feeds it those nodes' batches,
    and every evaluation metric is computed over all n nodes, equal to the single-process value; ``train/loss`` is
    the mean over the process's own nodes (no collective in the training step). With ``init="same"`` every node
    starts from rank 0's model (broadcast once at ``setup``), so a model instance built differently per process is
    no problem.

    Raises:
        ValueError: At construction if ``num_nodes`` < 2, ``execution``, ``init`` or ``lr_scheduler_interval`` is
            unknown, the model's trainable parameters have several dtypes or devices, a LightningModule uses manual
            optimization or comes with ``optimizer``, ``lr_scheduler``, ``loss`` or ``metrics``, or ``optimizer``
            builds LBFGS (tried on a one-element parameter); in a training step if the batch is not per node (every
            tensor ``(n, B, ...)``), the loss cannot take the model's output, or a LightningModule's
            ``training_step`` returns no scalar loss.
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
        loss: Loss | None = None,
        metrics: Mapping[str, Metric] | MetricCollection | None = None,
        backward_chunk: BackwardChunk = "auto",
        activation_budget: int | None = None,
    ) -> None:
        super().__init__()
        check_int("num_nodes", num_nodes, 2)
        check_int("seed", seed, 0)
        if backward_chunk not in ("auto", "all"):
            check_int("backward_chunk", backward_chunk, 1, hint=" or 'auto' or 'all'")
        if activation_budget is not None:
            check_int("activation_budget", activation_budget, 1, hint=" (bytes) or None")
        if execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
        if lr_scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"lr_scheduler_interval must be 'step' or 'epoch', got {lr_scheduler_interval!r}")
        wraps_lightning = is_lightning_module(model)
        if wraps_lightning:
            given = [
                name
                for name, v in (
                    ("optimizer", optimizer),
                    ("lr_scheduler", lr_scheduler),
                    ("loss", loss),
                    ("metrics", metrics),
                )
                if v is not None
            ]
            if given:
                raise ValueError(
                    f"model is a LightningModule ({_name(model)}), which defines its own optimization, loss and "
                    f"metrics: leave {', '.join(given)} unset (its configure_optimizers, training_step and "
                    "validation_step are used)"
                )
            if execution == "vmap":
                raise ValueError(
                    f"execution='vmap' needs an nn.Module model; the steps of the LightningModule {_name(model)} run "
                    "per node: use execution='auto' or 'loop'"
                )
        if loss is not None and not callable(loss):
            raise ValueError(f"loss must be a callable (output, target) -> scalar tensor, got {type(loss).__name__}")
        if isinstance(loss, nn.Module) and any(True for _ in loss.parameters()):
            raise ValueError(
                f"loss {type(loss).__name__} has parameters: they would be one set shared by all nodes, trained on "
                "the sum of their losses and never gossiped; make them part of the model (its forward) instead"
            )
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler", "loss", "metrics"])
        self.num_nodes = num_nodes
        self.execution = execution
        self.optimizer_factory = optimizer
        if optimizer is not None:  # refuse a non-coordinate-wise optimizer now, before a run folder exists
            try:
                probe = optimizer([nn.Parameter(torch.zeros(1))])
            except Exception:  # a factory that needs real parameters: checked in configure_optimizers
                probe = None
            if isinstance(probe, Optimizer):
                self._check_coordinate_wise(probe)
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        self.loss = loss
        self.init = init
        self.replicas = ReplicaStack(
            model, num_nodes, init=init, seed=seed, template_device="keep" if wraps_lightning else "meta"
        )
        self._wraps_lightning = wraps_lightning
        if self.node_module is not None and not self.node_module.automatic_optimization:
            raise ValueError(
                f"{_name(model)} uses manual optimization (automatic_optimization = False); MosaicModule steps one "
                "optimizer on all nodes' parameters and supports automatic optimization only"
            )
        self._nodes: LightningNodes | None = None
        self._vmap_unusable = False
        self._auto_execution: dict[str, str] = {}
        self._fixed_coordinates: Tensor | None = None
        self._frozen: Tensor | None = None
        self.backward_chunk = backward_chunk
        self.activation_budget = activation_budget
        self._auto_chunk: int | None = None  # the vmap chunk backward_chunk="auto" measured in this fit
        self._backward_done = False  # this step's gradients were made per chunk in training_step
        self._average_state: dict[str, Tensor] | None = None
        self.user_metrics = dict(metrics.items()) if metrics is not None else {}
        for name, metric in self.user_metrics.items():
            if not isinstance(metric, Metric):
                raise ValueError(f"metrics[{name!r}] must be a torchmetrics Metric, got {type(metric).__name__}")
        self.eval_metrics = nn.ModuleDict(
            {stage: nn.ModuleDict(self.configure_eval_metrics()) for stage in ("val", "test")}
        )

    @property
    def node_module(self) -> LightningModule | None:
        """The user's LightningModule whose steps every node runs (the replicas' template, outside the module
        tree: its own tensors are not parameters), or ``None`` for an nn.Module model."""
        return self.replicas.template if self._wraps_lightning else None  # type: ignore[return-value]

    # -- the gossip target: what MosaicGossip mixes ---------------------------------------------------------------

    @property
    def first_node(self) -> int:
        """Global index of this process's first node (0 in one process)."""
        return self.replicas.first_node

    @property
    def gossip_parameters(self) -> Tensor:
        """This process's ``(m, d)`` rows of the node parameter matrix (all n in one process), row i = node
        ``first_node + i``; gossip mixes them in place."""
        return self.replicas.flat

    def gossip_rows(self) -> Tensor:
        """The ``(m, d)`` rows to mix in place (the parameters' storage, outside autograd)."""
        return self.replicas.flat.data

    def load_gossip_rows(self, rows: Tensor) -> None:
        """Take mixed rows back (nothing to do when ``rows`` is :meth:`gossip_rows` itself)."""
        flat = self.replicas.flat.data
        if rows.data_ptr() != flat.data_ptr():
            flat.copy_(rows)

    def freeze_nodes(self, mask: Tensor | None) -> None:
        """Make the nodes where the ``(m,)`` bool ``mask`` is True skip the next optimizer step (their parameters and
        per-coordinate optimizer state stay as they are); ``None`` lets every node step. Used by fault models
        (stragglers, churn)."""
        if mask is not None and tuple(mask.shape) != (self.replicas.num_nodes,):
            raise ValueError(f"mask must be shaped ({self.replicas.num_nodes},), got {tuple(mask.shape)}")
        self._frozen = mask

    @property
    def frozen_nodes(self) -> Tensor | None:
        """The ``(m,)`` bool mask given to :meth:`freeze_nodes` for the coming optimizer step, or ``None``."""
        return self._frozen

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

    # -- setup ----------------------------------------------------------------------------------------------------

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
            if self.init == "same":  # every node starts from rank 0's model (an instance may differ per process)
                with torch.no_grad():
                    for rows in (self.replicas.flat.data, *self.replicas.stacked_buffers().values()):
                        broadcast_first_row_(rows)
        if self.node_module is not None:
            self.node_module.trainer = self.trainer  # its steps read self.trainer, self.global_step, ...
            if self._nodes is None and (hooks := ignored_hooks(self.node_module)):
                rank_zero_warn(
                    f"{_name(self.node_module)} overrides {', '.join(hooks)}, which MosaicModule does not call: it "
                    "runs the steps and epoch start/end hooks per node and configure_optimizers once"
                )
            if self._nodes is None:
                self._nodes = LightningNodes(
                    self.node_module, self.first_node, self.replicas.num_nodes, self.num_nodes, self.sharded
                )
                self.node_metrics = self._nodes.node_metrics  # registered: follows the device, never synchronized

    def _template_to_device(self) -> None:
        if self.node_module is not None:
            self.node_module.to(self.device)
            self._require_nodes().refresh()  # attributes the user set on the module since the last stage

    def on_fit_start(self) -> None:
        self._template_to_device()
        self._auto_chunk = None  # measured again on this fit's first step (device, batch size may differ)

    def on_validation_start(self) -> None:
        self._template_to_device()

    def on_test_start(self) -> None:
        self._template_to_device()

    def on_predict_start(self) -> None:
        self._template_to_device()

    def on_train_start(self) -> None:
        """Refuse a plain ``DataLoader(dataset, batch_size=B)``: its batches are not one mini-batch per node, even
        when their shapes happen to look so (B == n).

        Raises:
            ValueError: If the training loader has a ``batch_size`` (per-node loaders are built on a batch sampler).
        """
        loaders: list[DataLoader] = []
        apply_to_collection(self.trainer.train_dataloader, DataLoader, loaders.append)
        for loader in loaders:
            if loader.batch_size is not None:
                raise ValueError(
                    f"the training DataLoader draws plain batches of batch_size={loader.batch_size} samples, not one "
                    "mini-batch per node from its own shard; build it with NodeDataModule.from_datasets(...), or "
                    "DataLoader(dataset, batch_sampler=NodeBatchSampler(partition, B), "
                    f"collate_fn=NodeBatchCollate({self.replicas.num_nodes}))"
                )

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
        """The execution path in use on the module's current device (``"auto"`` falls back to ``"loop"`` for good
        once the model fails under ``torch.func.vmap``)."""
        if self.node_module is not None or self._vmap_unusable:
            return "loop"
        if self.execution != "auto":
            return self.execution
        device = self.device.type  # default_execution walks the model's modules: once per device type, not per step
        if device not in self._auto_execution:
            self._auto_execution[device] = default_execution(self.device, self.replicas.template)
        return self._auto_execution[device]

    def forward(self, *inputs: Any, shared_input: bool = False) -> Any:
        """All nodes' outputs: inputs ``(n, B, ...)`` -> outputs ``(n, B, ...)``; with ``shared_input``, inputs
        ``(B, ...)`` fed to every node.

        Raises:
            ValueError: With ``execution="vmap"``, if the model cannot run under ``torch.func.vmap`` (an op without
                a batching rule such as ``nn.LSTM``, data-dependent control flow, ``.item()``).
        """
        return self._run_nodes(inputs, shared_input)

    def _run_nodes(
        self,
        inputs: tuple[Any, ...],
        shared_input: bool = False,
        rows: range | None = None,
        params: Tensor | None = None,
    ) -> Any:
        """:meth:`forward` of the rows ``rows`` (default all) with parameters ``params`` (default theirs), see
        :meth:`ReplicaStack.forward <lightning_mosaic.replicas.ReplicaStack.forward>`."""
        execution = self.resolved_execution()
        where = {"shared_input": shared_input, "rows": rows, "params": params}
        if execution != "vmap":
            return self.replicas(*inputs, execution=execution, **where)
        try:
            return self.replicas(*inputs, execution="vmap", **where)
        except (RuntimeError, NotImplementedError, ValueError) as error:
            text = str(error)
            if "vmap" not in text and "Batching rule" not in text:
                raise
            reason = text.strip().splitlines()[0][:300]
            if self.execution == "vmap":
                raise ValueError(
                    f"the model {type(self.replicas.template).__name__} cannot run under torch.func.vmap ({reason}); "
                    "use execution='loop' (or 'auto')"
                ) from error
            rank_zero_warn(
                f"the model {type(self.replicas.template).__name__} cannot run under torch.func.vmap ({reason}); "
                "execution='auto' runs it per node (execution='loop') from now on"
            )
            self._vmap_unusable = True
            return self.replicas(*inputs, execution="loop", **where)

    def split_batch(self, batch: Any) -> tuple[tuple[Any, ...], Any]:
        """``(inputs, target)`` of a batch: a tuple or list ``(input_1, ..., input_k, target)`` gives
        ``((input_1, ..., input_k), target)``. Override for other layouts (e.g. a dict batch). Only tensors are split
        per node: other fields of a training batch (e.g. a list of sample ids) reach every node whole, and a model's
        outputs must be tensors (or tuples, lists, dicts of them, without ``None``).

        Raises:
            ValueError: If the batch is not a tuple or list of at least two entries.
        """
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            got = (
                f"{type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list)) else type(batch).__name__
            )
            raise ValueError(
                f"batch must be a tuple or list (input_1, ..., input_k, target), got {got}; override "
                "MosaicModule.split_batch for another layout, or wrap a LightningModule whose steps read it"
            )
        return tuple(batch[:-1]), batch[-1]

    def _check_node_batch(self, batch: Any) -> None:
        """Every tensor of a training batch must be ``(m, B, ...)``, with the same m = this process's nodes and B."""
        m = self.replicas.num_nodes
        shapes = tensor_shapes(batch)
        heads = {shape[:2] for shape in shapes if len(shape) >= 2}
        if not shapes or len(heads) != 1 or any(len(s) < 2 for s in shapes) or next(iter(heads))[0] != m:
            where = (
                f"n = num_nodes = {m}" if not self.sharded else f"n = this process's nodes = {m} of {self.num_nodes}"
            )
            raise ValueError(
                f"a training batch must hold one mini-batch per node, every tensor shaped (n, B, ...) with {where}; "
                f"got tensors shaped {', '.join(str(s) for s in shapes) or '(none)'}. Build the training loader with "
                "NodeDataModule.from_datasets(...), or DataLoader(dataset, batch_sampler=NodeBatchSampler(partition, "
                f"B), collate_fn=NodeBatchCollate({m}))"
            )

    def per_sample_loss(self, outputs: Any, targets: Tensor) -> Tensor:
        """The default loss: cross-entropy per node and sample (or token), outputs ``(n, B, ..., C)``, class
        indices ``(n, B, ...)`` -> ``(n, B, ...)``. Override for another default task (e.g. regression).

        Raises:
            ValueError: If the outputs are not one tensor with a class dimension matching the targets.
        """
        if not isinstance(outputs, Tensor) or not isinstance(targets, Tensor) or outputs.shape[:-1] != targets.shape:
            raise ValueError(
                f"the default loss (cross-entropy) takes logits (n, B, ..., C) and class indices (n, B, ...), got "
                f"outputs {_describe(outputs)} and targets {_describe(targets)}; pass loss=... taking one node's "
                "(output, target)"
            )
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise ValueError(
                f"the default loss (cross-entropy) takes class indices (an integer tensor), got {targets.dtype} "
                "targets; for regression pass loss=nn.MSELoss() (and metrics=..., e.g. torchmetrics' MeanSquaredError)"
            )
        flat = F.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1), reduction="none", ignore_index=IGNORE_INDEX
        )
        return flat.view(targets.shape)

    def per_sample_correct(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """1.0 where the prediction is right: outputs ``(n, B, ..., C)``, targets ``(n, B, ...)`` -> ``(n, B, ...)``.
        Targets equal to :data:`IGNORE_INDEX` (padding) are left out of the default loss and accuracy."""
        return (outputs.argmax(dim=-1) == targets).to(torch.float32)

    @staticmethod
    def _counted(targets: Any) -> Tensor | None:
        """``(n, k)`` mask of the targets the default loss and accuracy count (``None``: all of them)."""
        if not isinstance(targets, Tensor) or targets.is_floating_point():
            return None
        counted = (targets != IGNORE_INDEX).flatten(1)
        return None if bool(counted.all()) else counted

    def node_losses(self, outputs: Any, targets: Any) -> Tensor:
        """``(c,)`` loss of every node whose outputs ``(c, B, ...)`` are given (all m of this process, or one chunk
        of them): the mean of :meth:`per_sample_loss` per node by default, else ``loss`` applied to every node's
        ``(output, target)`` (vectorized with ``torch.func.vmap``, or a loop when the loss cannot be vmapped).

        Raises:
            ValueError: If the loss cannot take the output and target, or does not return one scalar per node.
        """
        if self.loss is None:
            per_sample = self.per_sample_loss(outputs, targets).flatten(1)
            counted = self._counted(targets)
            if counted is None:
                return per_sample.mean(dim=1)
            return (per_sample * counted).sum(dim=1) / counted.sum(dim=1).clamp_min(1)
        loss, m = self.loss, node_batch_size(outputs)
        try:
            try:
                values = vmap(loss)(outputs, targets)
            except (RuntimeError, NotImplementedError):  # data-dependent control flow or an op vmap lacks
                values = torch.stack([loss(select_node(outputs, i), select_node(targets, i)) for i in range(m)])
        except (TypeError, ValueError, RuntimeError, IndexError) as error:
            raise ValueError(
                f"loss {_name(loss)} cannot take one node's output ({_describe(select_node(outputs, 0))}) and target "
                f"({_describe(select_node(targets, 0))}): {error}"
            ) from error
        if not isinstance(values, Tensor) or tuple(values.shape) != (m,):
            raise ValueError(
                f"loss {_name(loss)} must return one scalar per node's batch, got "
                f"{_describe(values) if isinstance(values, Tensor) else type(values).__name__} for {m} nodes"
            )
        return values

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self._backward_done = False
        self._check_node_batch(batch)
        if self.node_module is not None:
            return self._lightning_training_step(batch, batch_idx)
        inputs, targets = self.split_batch(batch)
        if self._chunk_backward():
            node_loss = self._backward_by_chunks(batch_idx, lambda rows, p: self._chunk_losses(batch, rows, p))
        else:
            node_loss = self.node_losses(self(*inputs), targets)  # (m,)
        # The mean over all n nodes: in a multi-process run, one all-reduce of the n losses (in node order, so the
        # mean is the single-process one whatever the blocks' sizes).
        with self._diagnosed("the all-reduce of train/loss"):
            losses = all_node_values(node_loss.detach(), self.replicas.first_node, self.num_nodes, sharded=self.sharded)
        self.log("train/loss", losses.mean(), prog_bar=True)
        return node_loss.sum()

    def _diagnosed(self, what: str) -> Any:
        """A failed collective of this training step raises ``CommunicationError`` naming the ranks that did not
        reach it and the global step (the others hit it at the same step)."""
        step = self.global_step  # 0 without a Trainer (training_step called directly)
        return diagnosed(f"{what} at global step {step}", f"train-step-{step}")

    def _lightning_training_step(self, batch: Any, batch_idx: int) -> Tensor:
        nodes, replicas = self._require_nodes(), self.replicas
        buffers = replicas.node_buffers()
        frozen = self._frozen

        def run(rows: range, params: Tensor) -> Tensor:
            """The user's training_step of nodes ``rows`` with parameters ``params`` (row j: node rows[j])."""
            unbound, losses = dict(zip(rows, params.unbind(0))), []
            for i in rows:
                if frozen is not None and bool(frozen[i]):  # skips this local step: its step is not run at all
                    losses.append(unbound[i].sum() * 0)
                    continue
                node_batch = select_node(batch, i)
                with nodes.node(i, "train", node_batch_size(node_batch)):
                    state = replicas.node_tensors(i, buffers, unbound)
                    output = replicas.call_node(i, _step("training_step"), node_batch, batch_idx, state=state)
                losses.append(step_loss(output, f"{_name(self.node_module)}.training_step"))
            return torch.stack(losses)

        if self._chunk_backward():
            node_loss = self._backward_by_chunks(batch_idx, run)
        else:
            node_loss = run(range(replicas.num_nodes), replicas.flat)
        self._log_node_step(nodes, node_loss, frozen)
        return node_loss.sum()

    def _log_node_step(self, nodes: LightningNodes, node_loss: Tensor, frozen: Tensor | None) -> None:
        """Log a wrapped module's training step over all n nodes: ``train/loss`` (the mean loss of the nodes that
        trained, unless the user logs ``train/loss``) and every name the nodes logged (mean and ``/node_std`` over
        the nodes that logged it). In a multi-process run, one ``all_gather_object`` of every process's values, so
        that processes whose nodes logged different names (e.g. all of them skipped the step) still agree."""
        rows = range(node_loss.shape[0])
        trained = [i for i in rows if frozen is None or not bool(frozen[i])]
        losses = node_loss.detach().cpu().tolist()
        local = {"": ([losses[i] for i in trained], trained, {})}  # "": train/loss ("" is no name a user can log)
        local.update(nodes.step_values())
        with self._diagnosed("the all-gather of the training step's logged values"):
            gathered = all_gather_objects((self.replicas.first_node, local)) if self.sharded else [(0, local)]
        by_name: dict[str, tuple[list[tuple[int, float]], dict[str, Any]]] = {}
        for first, values_of in gathered:
            for name, (values, logged_rows, options) in values_of.items():
                entries, _ = by_name.setdefault(name, ([], options))
                entries.extend((first + row, value) for row, value in zip(logged_rows, values))
        for name in sorted(by_name):
            entries, options = by_name[name]
            values = torch.tensor([value for _, value in sorted(entries)], dtype=torch.float32)  # node order
            if name == "":
                if "train/loss" not in nodes.logged("train") and values.numel():  # the user's own train/loss wins
                    self.log("train/loss", values.mean(), prog_bar=True)
                continue
            kept = {k: options[k] for k in ("prog_bar", "logger", "on_step", "on_epoch") if k in options}
            self.log(name, values.mean(), **kept, batch_size=1)
            if not options.get("on_epoch", False):  # logged on_epoch: its std over nodes comes at the epoch's end
                std = values.std(correction=0)
                self.log(name + "/node_std", std, on_step=True, on_epoch=False, logger=kept.get("logger", True))

    @property
    def resolved_backward_chunk(self) -> int | None:
        """Nodes per backward chunk of a training step on the current device: ``backward_chunk`` when an int (at
        most m); with ``"auto"``, 1 on the loop path and the chunk measured on the vmap path (``None`` until the
        first training step measured it); ``None`` with ``"all"`` (one joint backward)."""
        if self.backward_chunk == "all":
            return None
        if self.backward_chunk == "auto" and self.resolved_execution() == "vmap":
            return self._auto_chunk
        return self._chunk_size()

    def _chunk_backward(self) -> bool:
        """Whether this training step runs its backward per chunk of nodes (inside a Trainer's fit, automatic
        optimization, ``backward_chunk`` not ``"all"``)."""
        if self.backward_chunk == "all":
            return False
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached to a Trainer: the caller runs the backward of the returned loss
            return False
        return isinstance(getattr(trainer, "accumulate_grad_batches", None), int)

    def _chunk_losses(self, batch: Any, rows: range, params: Tensor) -> Tensor:
        """``(c,)`` losses of nodes ``rows`` (parameters ``params``) on their rows of a training batch."""
        part = apply_to_collection(batch, Tensor, lambda t: t[rows.start : rows.stop])
        inputs, targets = self.split_batch(part)
        return self.node_losses(self._run_nodes(inputs, rows=rows, params=params), targets)

    def _chunk_size(self) -> int:
        """Nodes per chunk: ``backward_chunk`` when an int; with ``"auto"``, 1 on the loop path and, on the vmap
        path, the chunk :meth:`_measure_chunk` chose (1 until it did)."""
        m = self.replicas.num_nodes
        if isinstance(self.backward_chunk, int):
            return min(self.backward_chunk, m)
        if self.resolved_execution() != "vmap" or self._auto_chunk is None:
            return 1
        return self._auto_chunk

    def _measure_chunk(self, saved_bytes: int) -> None:
        """Choose the vmap chunk of ``backward_chunk="auto"``: ``clamp(budget // saved_bytes, 1, m)`` for the bytes
        autograd saved for one node's backward (budget: ``activation_budget``, else a quarter of the free CUDA
        memory on CUDA, :data:`DEFAULT_ACTIVATION_BUDGET` elsewhere), off CUDA at most
        :data:`CHUNK_GRADIENT_BYTES` of gradient."""
        budget = self.activation_budget
        if budget is None:
            device = self.replicas.flat.device
            budget = torch.cuda.mem_get_info(device)[0] // 4 if device.type == "cuda" else DEFAULT_ACTIVATION_BUDGET
        chunk = budget // max(saved_bytes, 1)
        flat = self.replicas.flat
        if flat.device.type != "cuda":
            chunk = min(chunk, CHUNK_GRADIENT_BYTES // (flat.shape[1] * flat.element_size()))
        self._auto_chunk = max(1, min(self.replicas.num_nodes, chunk))

    def _backward_by_chunks(self, batch_idx: int, losses_of: Callable[[range, Tensor], Tensor]) -> Tensor:
        """Forward and backward chunk by chunk (see the class docstring, "Backward per chunk"): ``losses_of(rows,
        params)`` gives the ``(c,)`` losses (with their graph) of nodes ``rows`` run with the ``(c, d)`` leaf
        ``params`` (a view of their rows); each chunk's gradient goes to its rows of ``flat.grad`` before the next
        chunk's forward. Returns the ``(m,)`` detached losses."""
        trainer, flat = self.trainer, self.replicas.flat
        accumulate = trainer.accumulate_grad_batches
        grad = flat.grad
        # fresh: every row is written below (copied, or zeroed when its chunk has no gradient), none added to.
        fresh = grad is None or batch_idx % accumulate == 0  # where Lightning's closure zeroes the gradients
        if fresh and not _writable_like(grad, flat):
            # The previous step's gradient tensor is overwritten when it can be (as zero_grad(set_to_none=False)
            # would): a fresh (m, d) tensor costs a page fault per 4 KiB on its first write (88 ms for MovieLens at
            # n = 943, d = 55,125, against 6 ms to overwrite one).
            grad = torch.empty_like(flat, memory_format=torch.contiguous_format)
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # e.g. 16-mixed's GradScaler
        measure = self.backward_chunk == "auto" and self._auto_chunk is None and self.resolved_execution() == "vmap"
        m, start, values = self.replicas.num_nodes, 0, []
        while start < m:
            rows = range(start, min(m, start + self._chunk_size()))
            params = flat.detach()[rows.start : rows.stop].requires_grad_()
            if measure:  # the first chunk is one node: count what autograd saves for its backward
                with _SavedBytes(flat) as saved:
                    losses = losses_of(rows, params)
                self._measure_chunk(saved.total)
                measure = False
            else:
                losses = losses_of(rows, params)
            chunk_grad = None
            if losses.requires_grad:
                total = losses.sum() / accumulate  # as Lightning's closure divides the step's loss
                if scaler is not None:
                    total = scaler.scale(total)
                with _autocast_off(flat.device.type):  # Lightning's backward runs outside the autocast context
                    (chunk_grad,) = torch.autograd.grad(total, params, allow_unused=True)
            rows_grad = grad[rows.start : rows.stop]
            if chunk_grad is not None:
                rows_grad.copy_(chunk_grad) if fresh else rows_grad.add_(chunk_grad)
            elif fresh:
                rows_grad.zero_()
            values.append(losses.detach())
            start = rows.stop
        flat.grad = grad
        self._backward_done = True
        return torch.cat(values)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Optimizer) -> None:
        """Zero the gradients, unless this step's ``training_step`` made them per chunk (it reset them first)."""
        if not self._backward_done:
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Back-propagate the step's loss, unless ``training_step`` already did it per chunk of nodes (then the
        returned loss is detached and this does nothing)."""
        if self._backward_done:
            self._backward_done = False
            return
        super().backward(loss, *args, **kwargs)

    def _require_nodes(self) -> LightningNodes:
        if self._nodes is None:
            raise RuntimeError("the wrapped LightningModule runs inside a Trainer: call trainer.fit/validate/test")
        return self._nodes

    # -- evaluation -----------------------------------------------------------------------------------------------

    def configure_eval_metrics(self) -> dict[str, nn.Module]:
        """Fresh metric states of one evaluation stage, by name (called once per stage by ``__init__``): the node
        loss, accuracy for the default classification, and one copy per node plus one for the averaged model of
        every user metric. Override, with :meth:`update_eval_metrics` and :meth:`compute_eval_metrics`, for a
        task's own vectorized metrics (see :class:`~lightning_mosaic.tasks.RatingModule`)."""
        n = self.num_nodes
        states: dict[str, nn.Module] = {"node_loss": NodeMean(n)}
        if self.loss is None:
            states.update({"node_acc": NodeMean(n), "avg_acc": NodeMean(1)})
        for name, metric in self.user_metrics.items():
            states[f"user_{name}"] = PerNodeMetric(metric, n, name=name)
        return states

    def update_eval_metrics(
        self, metrics: nn.ModuleDict, outputs: Any, avg_outputs: Any | None, target: Any, first_node: int = 0
    ) -> None:
        """Add one batch: outputs ``(m, B, ...)`` of nodes ``first_node, ..., first_node + m - 1`` (all n in one
        process), averaged-model outputs ``(B, ...)`` (``None`` in the processes that do not evaluate it), targets
        ``(B, ...)``."""
        m = self.replicas.num_nodes
        targets = apply_to_collection(target, Tensor, lambda t: t.unsqueeze(0).expand(m, *t.shape))
        counted = self._counted(targets) if self.loss is None else None
        if self.loss is None:
            metrics["node_loss"].update(self.per_sample_loss(outputs, targets).flatten(1), first_node, counted)
        else:
            batch = node_batch_size(target)
            metrics["node_loss"].update(self.node_losses(outputs, targets).unsqueeze(1).expand(m, batch), first_node)
        if "node_acc" in metrics:
            metrics["node_acc"].update(self.per_sample_correct(outputs, targets).flatten(1), first_node, counted)
            if avg_outputs is not None:
                correct = self.per_sample_correct(avg_outputs.unsqueeze(0), target.unsqueeze(0))
                metrics["avg_acc"].update(correct.flatten(1), 0, None if counted is None else counted[:1])
        for name in self.user_metrics:
            metrics[f"user_{name}"].update(outputs, avg_outputs, target)

    def compute_eval_metrics(self, metrics: nn.ModuleDict, stage: str) -> dict[str, Tensor]:
        """The values to log at the end of a stage, by logged name (every process gets the values over all n)."""
        values = {f"{stage}/loss": metrics["node_loss"].compute().mean()}
        if "node_acc" in metrics:
            node_acc = metrics["node_acc"].compute()
            values[f"{stage}/node_acc_mean"] = node_acc.mean()
            values[f"{stage}/node_acc_std"] = node_acc.std(correction=0)
            values[f"{stage}/avg_model_acc"] = metrics["avg_acc"].compute().mean()
        for name in self.user_metrics:
            per_node, average = metrics[f"user_{name}"].compute_nodes(self.first_node, self.replicas.num_nodes)
            values[f"{stage}/node_{name}_mean"] = per_node.mean()
            values[f"{stage}/node_{name}_std"] = per_node.std(correction=0)
            values[f"{stage}/avg_model_{name}"] = average
        return values

    def _eval_step(self, batch: Any, batch_idx: int, stage: str) -> None:
        first = self.replicas.first_node
        if self.node_module is not None:
            self._lightning_eval_step(batch, batch_idx, stage)
            return
        inputs, target = self.split_batch(batch)
        outputs = self(*inputs, shared_input=True)  # (m, B, ...)
        # the averaged model is evaluated once, by the process holding node 0
        avg = self.replicas.forward_average(*inputs, state=self._average_state) if first == 0 else None
        self.update_eval_metrics(self.eval_metrics[stage], outputs, avg, target, first)

    def _lightning_eval_step(self, batch: Any, batch_idx: int, stage: str) -> None:
        nodes, replicas = self._require_nodes(), self.replicas
        hook = STEP_HOOKS[stage]
        if not is_overridden(hook, self.node_module, parent=LightningModule):
            if stage == "test":
                raise ValueError(f"{_name(self.node_module)} defines no test_step() to run Trainer.test with")
            return  # no validation_step: nothing to validate, as Lightning skips its validation loop
        size = node_batch_size(batch)
        rows, buffers = replicas.flat.unbind(0), replicas.node_buffers()
        for i in range(replicas.num_nodes):
            with nodes.node(i, stage, size):
                replicas.call_node(i, _step(hook), batch, batch_idx, state=replicas.node_tensors(i, buffers, rows))
        if replicas.first_node == 0:
            with nodes.node(AVERAGE, stage, size):
                replicas.call_node(0, _step(hook), batch, batch_idx, state=self._average_state)

    def _eval_epoch_start(self) -> None:
        self._average_state = self.replicas.average_state()  # a collective in multi-process runs

    def _run_epoch_hook(self, stage: str, end: bool) -> None:
        """The user's epoch start or end hook of ``stage`` once per node (and, in evaluation, for the averaged
        model); at the end, the stage's logs reduced over nodes."""
        nodes, replicas = self._require_nodes(), self.replicas
        hook = EPOCH_HOOKS[stage][end]
        with_average = stage != "train" and replicas.first_node == 0
        if is_overridden(hook, self.node_module, parent=LightningModule):
            rows, buffers = replicas.flat.unbind(0), replicas.node_buffers()
            for i in range(replicas.num_nodes):
                with nodes.node(i, stage):
                    replicas.call_node(i, _hook(hook), state=replicas.node_tensors(i, buffers, rows))
            if with_average:
                with nodes.node(AVERAGE, stage):
                    replicas.call_node(0, _hook(hook), state=self._average_state)
        if not end:
            return
        values = nodes.epoch_values(stage, with_average, self.device)
        if values:
            self.log_dict({k: v.float() for k, v in values.items()}, sync_dist=self.sharded, reduce_fx="max")

    def _eval_epoch_end(self, stage: str) -> None:
        if self.node_module is not None:
            self._run_epoch_hook(stage, end=True)
            values = {}
        else:
            metrics = self.eval_metrics[stage]
            values = self.compute_eval_metrics(metrics, stage)
            for metric in metrics.values():
                metric.reset()
        values["gossip/consensus_distance"] = global_consensus_distance(self.replicas.flat, self.num_nodes)
        # Every value is already over all n nodes and equal on every process: "max" of equal copies is exact.
        self.log_dict(
            {k: v.to(torch.float32) for k, v in values.items()}, prog_bar=False, sync_dist=self.sharded, reduce_fx="max"
        )
        self._average_state = None

    def on_train_epoch_start(self) -> None:
        if self.node_module is not None:
            self._run_epoch_hook("train", end=False)

    def on_train_epoch_end(self) -> None:
        if self.node_module is not None:
            self._run_epoch_hook("train", end=True)

    def on_validation_epoch_start(self) -> None:
        self._eval_epoch_start()
        if self.node_module is not None:
            self._run_epoch_hook("val", end=False)

    def on_test_epoch_start(self) -> None:
        self._eval_epoch_start()
        if self.node_module is not None:
            self._run_epoch_hook("test", end=False)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._check_one_loader(dataloader_idx, "val")
        self._eval_step(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._check_one_loader(dataloader_idx, "test")
        self._eval_step(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def on_predict_epoch_start(self) -> None:
        self._eval_epoch_start()

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Every node's and the averaged model's predictions on a shared batch.

        A batch is what :meth:`split_batch` takes, or the inputs alone (a tensor, or a tuple or list of one).
        With a wrapped LightningModule, its ``predict_step`` (or ``forward`` on the batch) runs per node.

        Returns:
            ``{"nodes": outputs (m, B, ...), "avg_model": outputs (B, ...)}`` (``"avg_model"`` ``None`` in the
            processes not holding node 0); with a LightningModule, ``"nodes"`` is the list of its m outputs.
        """
        replicas, first = self.replicas, self.replicas.first_node
        state = self._average_state if first == 0 else None
        if self.node_module is not None:
            if is_overridden("predict_step", self.node_module, parent=LightningModule):
                call: Callable[..., Any] = _step("predict_step")
                args: tuple[Any, ...] = (batch, batch_idx)
            else:
                call, args = (lambda module, b: module(b)), (batch,)
            rows, buffers = replicas.flat.unbind(0), replicas.node_buffers()
            nodes = [
                replicas.call_node(i, call, *args, state=replicas.node_tensors(i, buffers, rows))
                for i in range(replicas.num_nodes)
            ]
            return {
                "nodes": nodes,
                "avg_model": None if state is None else replicas.call_node(0, call, *args, state=state),
            }
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            inputs, _ = self.split_batch(batch)
        else:
            inputs = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
        average = None if state is None else replicas.forward_average(*inputs, state=state)
        return {"nodes": self(*inputs, shared_input=True), "avg_model": average}

    @staticmethod
    def _check_one_loader(dataloader_idx: int, stage: str) -> None:
        if dataloader_idx != 0:
            raise ValueError(
                f"MosaicModule evaluates every node on one shared {stage} set; got several {stage} dataloaders "
                f"(dataloader_idx={dataloader_idx}): pass one (e.g. a ConcatDataset of them)"
            )

    # -- optimization ---------------------------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        if self.node_module is not None:
            config = self.node_module.configure_optimizers()
            optimizers = _optimizers_in(config)
            if len(optimizers) != 1:
                several = "; several optimizers need manual optimization" if optimizers else ""
                raise ValueError(
                    f"{_name(self.node_module)}.configure_optimizers must return one optimizer (optionally with LR "
                    f"schedulers), got {len(optimizers)}{several}"
                )
            self._rebind(optimizers[0])
            return config
        if self.optimizer_factory is None:
            optimizer: Optimizer = torch.optim.SGD(self.parameters(), lr=DEFAULT_LR)
        else:
            optimizer = self.optimizer_factory(self.parameters())
        self._check_coordinate_wise(optimizer)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_scheduler_interval},
        }

    @staticmethod
    def _check_coordinate_wise(optimizer: Optimizer) -> None:
        if isinstance(optimizer, torch.optim.LBFGS):
            raise ValueError(
                "optimizer LBFGS is not coordinate-wise: one LBFGS on the (n, d) buffer would couple the nodes; "
                "use SGD, Adam, AdamW, RMSprop or Adagrad"
            )

    def _rebind(self, optimizer: Optimizer) -> None:
        """Point a user's optimizer (built on the template's parameters) at the ``(n, d)`` buffer, in place, so that
        the LR schedulers built on it keep working: one parameter group with the user's hyperparameters."""
        self._check_coordinate_wise(optimizer)
        settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        for index, other in enumerate(settings[1:], start=1):
            if other != settings[0]:
                diffs = ", ".join(
                    f"{k}={other.get(k)!r} vs {settings[0].get(k)!r}"
                    for k in sorted(set(other) | set(settings[0]))
                    if other.get(k) != settings[0].get(k)
                )
                raise ValueError(
                    f"{_name(self.node_module)}.configure_optimizers: parameter group {index} has other "
                    f"hyperparameters than group 0 ({diffs}); all nodes' parameters are one (n, d) tensor, so one "
                    "setting applies to every parameter"
                )
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        template = dict(self.node_module.named_parameters())  # type: ignore[union-attr]
        fixed, offset = [], 0
        for name, size in zip(self.replicas.names, self.replicas.sizes, strict=True):
            if id(template[name]) not in optimized:
                fixed.append(torch.arange(offset, offset + size))
            offset += size
        self._fixed_coordinates = torch.cat(fixed) if fixed else None
        optimizer.param_groups.clear()
        optimizer.state.clear()
        optimizer.add_param_group({**settings[0], "params": [self.replicas.flat]})

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Step the optimizer; nodes frozen with :meth:`freeze_nodes` for this step keep their parameters and
        per-coordinate optimizer state as they were (they skip the local step), and so do the coordinates of
        parameters a wrapped LightningModule's optimizer does not hold."""
        frozen, fixed, flat = self._frozen, self._fixed_coordinates, self.replicas.flat
        rows = None if frozen is None or not bool(frozen.any()) else frozen.to(flat.device).nonzero().flatten()
        if rows is None and fixed is None:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
            self._frozen = None  # after the step: the closure's hooks may read frozen_nodes
            return
        inner = getattr(optimizer, "optimizer", optimizer)
        saved_columns = None if fixed is None else flat.data[:, fixed.to(flat.device)].clone()
        saved_rows = saved_state = saved_buffers = None
        if rows is not None:
            state = inner.state.get(flat, {})
            saved_rows = flat.data[rows].clone()
            saved_state = {k: v[rows].clone() for k, v in state.items() if torch.is_tensor(v) and v.shape == flat.shape}
            # the closure runs the forward pass: a frozen node's buffers (BatchNorm statistics) must not move either
            saved_buffers = {k: t[rows].clone() for k, t in self.replicas.stacked_buffers().items()}
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if saved_columns is not None:
            flat.data[:, fixed.to(flat.device)] = saved_columns
        if rows is not None:
            flat.data[rows] = saved_rows
            state = inner.state.get(flat, {})
            for key, value in saved_state.items():
                state[key][rows] = value
            for key, tensor in self.replicas.stacked_buffers().items():
                tensor[rows] = saved_buffers[key]
        self._frozen = None

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
        if self._fixed_coordinates is not None:  # not trained (outside the user's optimizer): not in the norm
            grad[:, self._fixed_coordinates.to(grad.device)] = 0
        if gradient_clip_algorithm in (None, "norm"):
            norms = grad.norm(dim=1, keepdim=True)
            grad.mul_((gradient_clip_val / (norms + 1e-6)).clamp(max=1.0))
        elif gradient_clip_algorithm == "value":
            grad.clamp_(-gradient_clip_val, gradient_clip_val)
        else:
            raise ValueError(f"gradient_clip_algorithm must be 'norm' or 'value', got {gradient_clip_algorithm!r}")


class _SavedBytes:
    """Within the block: ``total``, the bytes of the tensors autograd saves for backward (each tensor once; views
    of ``flat``'s storage, the parameters themselves, not counted), through ``saved_tensors_hooks``."""

    def __init__(self, flat: Tensor) -> None:
        self.total = 0
        self._storage = flat.untyped_storage().data_ptr()
        self._seen: set[tuple[int, int]] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: Tensor) -> Tensor:
        size = tensor.numel() * tensor.element_size()
        key = (tensor.data_ptr(), size)
        if key not in self._seen and tensor.untyped_storage().data_ptr() != self._storage:
            self._seen.add(key)
            self.total += size
        return tensor

    def __enter__(self) -> _SavedBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def _writable_like(grad: Tensor | None, flat: Tensor) -> bool:
    """Whether ``grad`` can be overwritten with a gradient of ``flat``: a dense contiguous tensor of its shape, dtype
    and device."""
    return (
        grad is not None
        and grad.layout == torch.strided
        and grad.shape == flat.shape
        and grad.dtype == flat.dtype
        and grad.device == flat.device
        and grad.is_contiguous()
    )


def _autocast_off(device_type: str) -> Any:
    """A context with autocast disabled for ``device_type`` if it is enabled there (else a no-op context)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _step(hook: str) -> Callable[..., Any]:
    return lambda module, batch, batch_idx: getattr(module, hook)(batch, batch_idx)


def _hook(name: str) -> Callable[[LightningModule], Any]:
    return lambda module: getattr(module, name)()


def _optimizers_in(config: Any) -> list[Optimizer]:
    """The optimizers in what ``configure_optimizers`` may return (an optimizer, a list or tuple, a dict)."""
    if isinstance(config, Optimizer):
        return [config]
    if isinstance(config, Mapping):
        return _optimizers_in(config.get("optimizer"))
    if isinstance(config, (list, tuple)):
        if len(config) == 2 and isinstance(config[0], (list, tuple)):  # ([optimizers], [schedulers])
            return _optimizers_in(list(config[0]))
        return [o for item in config for o in _optimizers_in(item)]
    return []


def _name(obj: Any) -> str:
    return getattr(obj, "__name__", None) or type(obj).__name__
