"""What :class:`~lightning_mosaic.callbacks.MosaicGossip` mixes: the gossip target contract, and its adapter for a
plain LightningModule that is one node per process."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from lightning.pytorch import LightningModule
from torch import Tensor


@runtime_checkable
class GossipTarget(Protocol):
    """This process's rows of the ``(n, d)`` node parameter matrix, as :class:`MosaicGossip` needs them.

    :class:`~lightning_mosaic.MosaicModule` is one (all its nodes, or a process's block of them);
    :class:`ModuleParameters` adapts any ``LightningModule`` run as one node per process.

    Attributes:
        num_nodes: n, the number of nodes over all processes.
        first_node: Global index of this process's first row.
        parameter_sizes: Element counts of one node's trainable tensors, in order (they sum to d).
    """

    num_nodes: int

    @property
    def first_node(self) -> int: ...

    @property
    def parameter_sizes(self) -> list[int]: ...

    def gossip_rows(self) -> Tensor:
        """The ``(m, d)`` rows of this process's nodes; the gossip mixes them in place."""
        ...

    def load_gossip_rows(self, rows: Tensor) -> None:
        """Take the mixed ``rows`` back (a no-op when :meth:`gossip_rows` returned the parameters' own storage)."""
        ...


class ModuleParameters:
    """A plain ``LightningModule`` as one node of a multi-process run: its trainable parameters, flattened in
    ``parameters()`` order, are the ``(1, d)`` row of node ``rank``.

    Args:
        module: The LightningModule of this process.
        num_nodes: n = the number of processes.
        rank: This process's global rank (= its node).

    Raises:
        ValueError: If the module has no trainable parameters.
    """

    def __init__(self, module: LightningModule, num_nodes: int, rank: int) -> None:
        self.module = module
        self.num_nodes = num_nodes
        self.first_node = rank
        self.parameter_sizes = [p.numel() for p in self._parameters()]
        if not self.parameter_sizes:
            raise ValueError(f"{type(module).__name__} has no trainable parameters to gossip")

    def _parameters(self) -> list[Tensor]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def gossip_rows(self) -> Tensor:
        """A ``(1, d)`` copy of the module's trainable parameters."""
        return torch.cat([p.detach().reshape(-1) for p in self._parameters()]).unsqueeze(0)

    def load_gossip_rows(self, rows: Tensor) -> None:
        """Write the mixed ``(1, d)`` row back into the module's parameters."""
        offset = 0
        with torch.no_grad():
            for p in self._parameters():
                p.copy_(rows[0, offset : offset + p.numel()].view_as(p))
                offset += p.numel()


def as_gossip_target(module: LightningModule, world_size: int, rank: int) -> GossipTarget:
    """The module itself when it is a :class:`GossipTarget`, else :class:`ModuleParameters` (one node per process).

    Raises:
        TypeError: If the module is not a gossip target and the run has fewer than two processes (one node cannot
            gossip).
    """
    if isinstance(module, GossipTarget):
        return module
    if world_size < 2:
        raise TypeError(
            f"MosaicGossip on {type(module).__name__} (not a lightning_mosaic.MosaicModule) needs one process per "
            "node: Trainer(strategy='mosaic', devices=N) with N >= 2 processes; to simulate n nodes in one process, "
            "wrap it: MosaicModule(model=<your module>, num_nodes=n)"
        )
    return ModuleParameters(module, world_size, rank)
