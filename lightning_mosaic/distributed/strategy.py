"""``MosaicStrategy``: processes launched like DDP, but no gradient all-reduce; every process keeps its own nodes.

Lightning glue around :mod:`torch.distributed`. Registered in Lightning's strategy registry as ``"mosaic"``
(``Trainer(strategy="mosaic", devices=N)``; subprocess launch like ``"ddp"``, so it works under torchrun and SLURM too)
and ``"mosaic_spawn"`` (``torch.multiprocessing`` spawn).
"""

from __future__ import annotations

import atexit
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.fabric.utilities.apply_func import apply_to_collection, move_data_to_device
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from lightning_mosaic.distributed.sharding import node_bounds

RANK_STATES_KEY = "mosaic_rank_states"
"""Checkpoint key holding every process's model and optimizer states (each process's nodes differ)."""

DEFAULT_TIMEOUT_S = 1800.0
"""Default time in seconds a collective waits for the other ranks before failing (``torch.distributed``'s default)."""

NEEDS_NO_DISTRIBUTED_SAMPLER = (
    "Trainer(strategy='mosaic') needs Trainer(use_distributed_sampler=False): each process reads the data of its own "
    "nodes (NodeDataModule, or NodeShardSampler in your own dataloader) and evaluates them on the whole test set, so "
    "Lightning must not split the dataloaders over the processes with a DistributedSampler"
)
"""Why a ``DistributedSampler`` is refused (``MosaicStrategy.distributed_sampler_kwargs``, :func:`check_trainer`)."""


class MosaicStrategy(DDPStrategy):
    """Decentralized multi-process training: one process per device, each holding its own nodes; no all-reduce.

    Processes start exactly as with Lightning's ``DDPStrategy`` (``Trainer(devices=..., num_nodes=...)``, torchrun,
    SLURM), with NCCL on GPU and gloo on CPU, but the model is never wrapped in ``DistributedDataParallel``:
    gradients are never averaged and parameters are never broadcast behind the user's back. The only communication
    is what :class:`~lightning_mosaic.callbacks.MosaicGossip` sends (and metric reductions).

    - The strategy decides which nodes each process holds: of n nodes, rank r of w holds :meth:`node_block`,
      ``[floor(r n / w), floor((r + 1) n / w))`` (:func:`~lightning_mosaic.distributed.node_bounds`); the module
      and the datamodule ask it through :func:`local_nodes` (the gossip's
      :class:`~lightning_mosaic.distributed.ShardedMixer` takes every rank's block from the same ``node_bounds``).
    - A module that holds its own node rows, i.e. has a ``gossip_parameters`` attribute (the ``(m, d)`` rows of its
      nodes, as :class:`~lightning_mosaic.MosaicModule`), initializes them itself (``MosaicModule`` from its seed,
      and with ``init="same"`` from rank 0's model, which it broadcasts when it takes its block), so the strategy
      broadcasts nothing.
    - Any other ``LightningModule`` is one node per process (n = w). If ``broadcast_init`` (default), rank 0's
      initial parameters and buffers are broadcast once at the start of a fresh fit, on purpose: EL and Mosaic
      Learning start every node from the same model.
    - No ``DistributedSampler`` may be injected into the dataloaders: each process reads what its nodes own
      (:class:`~lightning_mosaic.data.NodeDataModule` does this for a ``MosaicModule``; use
      :class:`~lightning_mosaic.data.NodeShardSampler` in your own dataloader otherwise), and every process evaluates
      its nodes on the whole test set. Create the Trainer with ``use_distributed_sampler=False`` (the ``mosaic``
      command does); otherwise the first dataloader Lightning would wrap raises a ``ValueError`` saying so (see
      :attr:`distributed_sampler_kwargs`). A ``DistributedSampler`` you put into your own dataloader is yours.
    - Checkpoints: every rank's model and optimizer states are gathered to rank 0 and written in one file under
      ``"mosaic_rank_states"``; on load, each rank takes its own. Resume with the same number of processes.

    Args:
        accelerator, parallel_devices, cluster_environment, checkpoint_io, precision_plugin, process_group_backend:
            As for ``DDPStrategy``.
        timeout: Seconds (or a ``timedelta``) a collective waits for the other ranks before raising (default
            1800); a rank that dies or hangs makes the others fail after at most this long.
        start_method: ``"popen"`` (default, re-runs the script per process like ``"ddp"``) or ``"spawn"``,
            ``"fork"``, ``"forkserver"``.
        broadcast_init: Broadcast rank 0's initial model once at the start of a fresh fit of a module without
            ``gossip_parameters`` (default True).

    Raises:
        ValueError: If ``timeout`` is not positive.
    """

    strategy_name = "mosaic"

    def __init__(
        self,
        accelerator: Any = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: Any = None,
        checkpoint_io: Any = None,
        precision_plugin: Any = None,
        process_group_backend: str | None = None,
        timeout: float | timedelta = DEFAULT_TIMEOUT_S,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
        broadcast_init: bool = True,
    ) -> None:
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"timeout must be a positive number of seconds or a timedelta, got {timeout!r}")
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io,
            precision_plugin=precision_plugin,
            process_group_backend=process_group_backend,
            timeout=timedelta(seconds=float(seconds)),
            start_method=start_method,
        )
        self.timeout_s = float(seconds)
        self.broadcast_init = bool(broadcast_init)

    # -- which nodes this process holds ----------------------------------------------------------------------------

    def node_block(self, num_nodes: int) -> range:
        """The nodes this process holds, of ``num_nodes`` spread over the run's processes.

        Args:
            num_nodes: n, the number of nodes over all processes (n = w for a module that is one node per process).

        Returns:
            ``range(bounds[r], bounds[r + 1])`` with ``bounds = node_bounds(n, w)``, r the global rank and w the world
            size: contiguous blocks that differ in size by at most one node.

        Raises:
            ValueError: If ``num_nodes < 1`` or there are more processes than nodes.
        """
        bounds = node_bounds(num_nodes, self.world_size)
        return range(bounds[self.global_rank], bounds[self.global_rank + 1])

    # -- no DistributedDataParallel, no hidden synchronization --------------------------------------------------

    def setup_distributed(self) -> None:
        """Start the process group as ``DDPStrategy`` does, and destroy it when the process exits: a gloo group
        left to the interpreter's teardown can abort the process ("terminate called without an active exception",
        exit status -6) after a successful run."""
        super().setup_distributed()
        atexit.unregister(_destroy_process_group)  # registered once, however many trainers a process builds
        atexit.register(_destroy_process_group)

    def configure_ddp(self) -> None:
        """Keep the bare ``LightningModule``: no ``DistributedDataParallel`` wrapper, so no gradient all-reduce."""

    def setup(self, trainer: Trainer) -> None:
        assert self.accelerator is not None and self.model is not None
        self.accelerator.setup(trainer)
        fitting = trainer.state.fn == TrainerFn.FITTING
        self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        if fitting:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if fitting:
            _optimizer_states_to_device(self.optimizers, self.root_device)
            if self.broadcast_init and trainer.ckpt_path is None:
                self._broadcast_initial_model()

    def _broadcast_initial_model(self) -> None:
        module = self.lightning_module
        if hasattr(module, "gossip_parameters") or self.world_size == 1:  # it seeds its own nodes
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        """Never available: Lightning reads it only to wrap a dataloader's sampler in a ``DistributedSampler``.

        That wrapping would split every dataloader, the evaluation set included, over the processes, while each
        process must read the data of its own nodes (and all of the test set).

        Raises:
            ValueError: Always, asking for ``Trainer(use_distributed_sampler=False)``.
        """
        raise ValueError(NEEDS_NO_DISTRIBUTED_SAMPLER)

    # -- checkpoints hold every rank's nodes --------------------------------------------------------------------

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Gather every rank's model and optimizer states into the checkpoint, then write it from rank 0."""
        if self.world_size > 1:
            local = {"state_dict": checkpoint["state_dict"], "optimizer_states": checkpoint.get("optimizer_states", [])}
            portable = apply_to_collection(local, Tensor, lambda t: t.detach().cpu())
            gathered: list[Any] | None = [None] * self.world_size if self.is_global_zero else None
            dist.gather_object(portable, gathered, dst=0)
            if self.is_global_zero:
                assert gathered is not None
                gathered[0] = local  # rank 0's own tensors, stored once with the top-level state_dict
                checkpoint = {**checkpoint, RANK_STATES_KEY: {"world_size": self.world_size, "states": gathered}}
        super().save_checkpoint(checkpoint, filepath, storage_options)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Load a checkpoint and keep this rank's model and optimizer states.

        Raises:
            ValueError: If the checkpoint was written by another number of processes (naming both).
        """
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        ranks = checkpoint.pop(RANK_STATES_KEY, None)
        saved_world = 1 if ranks is None else int(ranks["world_size"])
        if saved_world != self.world_size:
            raise ValueError(
                f"checkpoint {checkpoint_path} holds the nodes of {saved_world} process(es), this run has "
                f"{self.world_size}; resume with the same number of processes (devices x num_nodes)"
            )
        if ranks is not None:
            mine = ranks["states"][self.global_rank]
            checkpoint["state_dict"] = mine["state_dict"]
            checkpoint["optimizer_states"] = mine["optimizer_states"]
        return checkpoint

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        for name, start_method in (("mosaic", "popen"), ("mosaic_spawn", "spawn")):
            strategy_registry.register(
                name,
                cls,
                description=f"Decentralized training, no gradient all-reduce (start_method={start_method!r})",
                start_method=start_method,
            )


def _optimizer_states_to_device(optimizers: list[Any], device: torch.device) -> None:
    """Move every optimizer's per-parameter state to ``device``, except ``step`` (where torch's optimizers want it)."""
    for optimizer in optimizers:
        for state in optimizer.state.values():
            if isinstance(state, dict):
                for key, value in state.items():
                    if key != "step":
                        state[key] = move_data_to_device(value, device)


def local_nodes(trainer: Trainer | None, num_nodes: int) -> range:
    """The nodes of ``num_nodes`` this process holds: all of them in one process, else the strategy's block.

    The one place that answers it for the module and the datamodule.

    Args:
        trainer: The running trainer, or ``None`` (outside a trainer: one process).
        num_nodes: n, the number of nodes over all processes.

    Returns:
        ``range(n)`` when ``trainer`` is ``None`` or runs one process; :meth:`MosaicStrategy.node_block` otherwise.

    Raises:
        ValueError: If the trainer runs several processes with another strategy than :class:`MosaicStrategy`
            (it would not know which nodes each process holds, and would average gradients or broadcast parameters
            across them), or there are more processes than nodes.
    """
    if trainer is None or trainer.world_size == 1:
        return range(num_nodes)
    if not uses_mosaic_strategy(trainer):
        raise ValueError(
            f"{num_nodes} nodes over {trainer.world_size} processes need Trainer(strategy='mosaic') "
            f"(lightning_mosaic.distributed.MosaicStrategy), got {type(trainer.strategy).__name__}: it would average "
            "gradients or broadcast parameters across the decentralized nodes"
        )
    return trainer.strategy.node_block(num_nodes)


def check_trainer(trainer: Trainer, num_nodes: int, *, use_distributed_sampler: bool) -> None:
    """Refuse, before ``Trainer.fit``, a run that the strategy would refuse once its processes have started.

    Lightning creates the run folder (the logger's ``log_dir``, and ``config.yaml`` under ``LightningCLI``) at the
    start of its ``setup`` stage, in the processes it has started, before the module, the datamodule and the
    callbacks can check anything there. The trainer knows its strategy, world size and rank from its construction,
    so these checks need no process group: the ``mosaic`` command calls this in ``LightningCLI.before_fit``, where
    a refused run has started no other process and written nothing.

    Args:
        trainer: The trainer about to fit.
        num_nodes: n, the number of nodes over all processes (n = ``trainer.world_size`` for a module that is one
            node per process).
        use_distributed_sampler: The trainer's ``use_distributed_sampler`` argument.

    Raises:
        ValueError: If the trainer runs several processes with another strategy than :class:`MosaicStrategy`, more
            processes than nodes (:func:`local_nodes`), or :class:`MosaicStrategy` with
            ``use_distributed_sampler=True``.
    """
    local_nodes(trainer, num_nodes)
    if use_distributed_sampler and uses_mosaic_strategy(trainer):
        raise ValueError(NEEDS_NO_DISTRIBUTED_SAMPLER)


def launches_the_processes(trainer: Trainer) -> bool:
    """Whether this process is the run's only one so far: one process, or Lightning's own launcher before it starts
    the others (``Trainer(devices=N)`` run as a plain command, not under torchrun, SLURM or as one of the processes
    Lightning started). Only then can work done before ``Trainer.fit`` (checking the data, downloading it) run once,
    before any other process exists."""
    if trainer.world_size == 1:
        return True
    environment = getattr(trainer.strategy, "cluster_environment", None)
    return environment is not None and not environment.creates_processes_externally


def check_single_process_checkpoint(checkpoint: dict[str, Any]) -> None:
    """Refuse, in a single-process run, a checkpoint that :class:`MosaicStrategy` wrote from several processes.

    :meth:`MosaicStrategy.load_checkpoint` takes every rank's states out of a multi-process checkpoint; a checkpoint
    that still holds them is being loaded in one process, where only rank 0's nodes would come back.

    Raises:
        ValueError: Naming the number of processes that wrote the checkpoint.
    """
    ranks = checkpoint.get(RANK_STATES_KEY)
    if ranks is not None:
        raise ValueError(
            f"the checkpoint holds the nodes of {ranks['world_size']} process(es), this run has 1; resume with "
            "Trainer(strategy='mosaic') and the same number of processes"
        )


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def uses_mosaic_strategy(trainer: Trainer) -> bool:
    """Whether ``trainer`` runs :class:`MosaicStrategy`."""
    return isinstance(trainer.strategy, MosaicStrategy)


def check_multiprocess_module(trainer: Trainer, module: LightningModule) -> None:
    """Refuse a multi-process run that would all-reduce or broadcast decentralized nodes.

    Raises:
        ValueError: If ``trainer.world_size > 1`` and the strategy is not :class:`MosaicStrategy`.
    """
    if trainer.world_size > 1 and not uses_mosaic_strategy(trainer):
        raise ValueError(
            f"{type(module).__name__} with {trainer.world_size} processes needs Trainer(strategy='mosaic') "
            f"(lightning_mosaic.distributed.MosaicStrategy), got {type(trainer.strategy).__name__}: it would average "
            "gradients or broadcast parameters across the decentralized nodes"
        )


if "mosaic" not in StrategyRegistry:
    MosaicStrategy.register_strategies(StrategyRegistry)
