"""``NodeShardSampler``: one node's Dirichlet shard for the process that trains it (one node per process)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from lightning_mosaic._validation import check_int
from lightning_mosaic.data.sampler import NodeBatchSampler

__all__ = ["NodeShardSampler"]


class NodeShardSampler(Sampler[int]):
    """Dataset indices of node ``rank``'s shard, for a process that trains one node (``Trainer(strategy="mosaic")``).

    Use it as the ``sampler`` of your own training ``DataLoader``, with the partition from
    :func:`~lightning_mosaic.data.dirichlet_partition` computed identically (same labels, n = world size, seed) in
    every process. Process r reads node r's stream, the same stream :class:`~lightning_mosaic.data.NodeBatchSampler`
    gives node r in a single-process simulation: successive seeded permutations of the shard. Every epoch has the
    same number of samples on every process (default ``ceil(total / n)``, the mean shard size), so all processes run
    the same number of steps per epoch, which the gossip and validation need; a small shard wraps into its next
    permutation, a large one is covered over several epochs.

    Call :meth:`set_epoch` before each epoch (Lightning does).

    Args:
        partition: One 1-D index array per node, ``n = len(partition) >= 1``, each non-empty.
        rank: The node (process) to serve; default: the rank in the initialized default process group, read at first
            use (so build the DataLoader inside ``train_dataloader()``, after the processes have started).
        seed: Non-negative seed of the permutations (use the same on every process).
        samples_per_epoch: Samples per epoch ``>= 1``; default ``ceil(total / n)``.

    Raises:
        ValueError: For a bad ``partition``, ``seed`` or ``samples_per_epoch``, or a ``rank`` outside ``[0, n)``.
        RuntimeError: If ``rank`` is None and no process group is initialized.
    """

    def __init__(
        self,
        partition: Sequence[Sequence[int] | np.ndarray],
        *,
        rank: int | None = None,
        seed: int = 0,
        samples_per_epoch: int | None = None,
    ) -> None:
        self._streams = NodeBatchSampler(partition, 1, seed=seed)
        n = self._streams.num_nodes
        self.num_nodes = n
        if rank is not None:
            check_int("rank", rank, 0, n - 1, hint=f" (one node per process: n = len(partition) = {n})")
        self._rank = rank
        if samples_per_epoch is None:
            samples_per_epoch = math.ceil(self._streams.num_samples / n)
        self.samples_per_epoch = check_int("samples_per_epoch", samples_per_epoch, 1)
        self.epoch = 0

    @property
    def rank(self) -> int:
        """The node this sampler serves."""
        if self._rank is None:
            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError(
                    "NodeShardSampler(rank=None) reads the process rank from torch.distributed, which is not "
                    "initialized yet: create the DataLoader in train_dataloader() or pass rank="
                )
            rank = dist.get_rank()
            check_int("rank", rank, 0, self.num_nodes - 1, hint=f" (the partition has n = {self.num_nodes} nodes)")
            self._rank = rank
        return self._rank

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration covers (``epoch >= 0``)."""
        self.epoch = check_int("epoch", epoch, 0)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __iter__(self) -> Iterator[int]:
        start = self.epoch * self.samples_per_epoch
        return iter(self._streams.node_stream(self.rank, start, self.samples_per_epoch))
