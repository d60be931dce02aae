"""Per-node mini-batch sampling: one DataLoader batch holds one mini-batch for every node."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from lightning_mosaic._validation import check_int as _check_int
from lightning_mosaic.data.gather import collate
from lightning_mosaic.seeding import SAMPLER_STREAM, derive_seeds

__all__ = ["NodeBatchSampler", "NodeBatchCollate", "NodeDataLoader"]


class NodeBatchSampler(Sampler[list[int]]):
    """Batch sampler that yields one mini-batch per node, concatenated node-major.

    Every item is a flat list of ``n * B`` dataset indices: node 0's ``B`` indices, then node 1's, and so on,
    so that :class:`NodeBatchCollate` can reshape the collated ``(n * B, ...)`` tensors into ``(n, B, ...)``.

    Node ``i`` reads an infinite stream made of successive permutations of its own shard: pass ``p`` is the
    shard permuted by ``torch.randperm`` under a ``torch.Generator`` seeded with
    :func:`~lightning_mosaic.seeding.derive_seed` ``(seed, SAMPLER_STREAM, i, p)``. A node therefore sees every
    index of its shard once before any repeats, and a shard smaller than ``B`` simply wraps into its next pass.
    Nodes never wait for one another: each keeps drawing from its own shard whatever its size.

    The sampler is stateless apart from the epoch: with ``L = len(self)``, batch ``t`` of epoch ``e`` covers
    stream positions ``[(e * L + t) * B, (e * L + t + 1) * B)`` of every node. Consecutive epochs continue the
    streams and iterating the same epoch twice gives the same batches. Call :meth:`set_epoch` before each
    epoch; Lightning does so automatically because it calls ``set_epoch`` on
    ``dataloader.batch_sampler.sampler``, which is this object itself (``self.sampler is self``).

    In a multi-process run (``Trainer(strategy="mosaic")``), each process passes ``nodes``, its own block of
    nodes: it yields the same per-node batches as the single-process sampler, for those nodes only, and every
    process has the same number of batches per epoch.

    Args:
        partition: One 1-D array of dataset indices per node (e.g. the output of
            :func:`~lightning_mosaic.data.dirichlet_partition`); ``n = len(partition) >= 1`` and every shard
            must be non-empty. Indices are used in the order given, before shuffling.
        batch_size: Per-node mini-batch size ``B >= 1``.
        seed: Non-negative seed of the per-node shuffles.
        num_batches: Number of batches per epoch ``>= 1``; default ``ceil(total / (n * B))`` where ``total``
            is the summed shard size, i.e. one pass over the training set counted in samples.
        nodes: The nodes whose batches to yield, a ``range`` within ``[0, n)`` (default: all n); items then hold
            ``len(nodes) * B`` indices.

    Raises:
        ValueError: ``partition`` is empty, a shard is not 1-D, is empty or holds non-integer or negative
            values; ``batch_size < 1``; ``num_batches < 1``; ``seed < 0``; ``nodes`` is empty or not within
            ``[0, n)``.

    Example:
        >>> sampler = NodeBatchSampler([[0, 1, 2], [3, 4]], batch_size=2, seed=0)
        >>> len(sampler), len(next(iter(sampler)))
        (2, 4)
    """

    def __init__(
        self,
        partition: Sequence[Sequence[int] | np.ndarray],
        batch_size: int,
        *,
        seed: int = 0,
        num_batches: int | None = None,
        nodes: range | None = None,
    ) -> None:
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seed = _check_int("seed", seed, 0)
        if num_batches is not None:
            num_batches = _check_int("num_batches", num_batches, 1)
        if isinstance(partition, (str, bytes)) or not isinstance(partition, Sequence) or len(partition) == 0:
            raise ValueError(
                f"partition must be a non-empty sequence of 1-D index arrays, one per node; got {partition!r}"
            )
        shards: list[np.ndarray] = []
        for node, shard in enumerate(partition):
            array = np.asarray(shard)
            if array.ndim != 1 or array.size == 0:
                raise ValueError(
                    f"partition[{node}] must be a non-empty 1-D index array; got shape {array.shape}. "
                    "Every node needs at least one sample (see min_samples of dirichlet_partition)"
                )
            if array.dtype == bool or not np.issubdtype(array.dtype, np.integer) or array.min() < 0:
                raise ValueError(f"partition[{node}] must hold non-negative integer dataset indices; got {array.dtype}")
            shards.append(array.astype(np.int64, copy=False))
        self._shards = shards
        self._sizes = [len(s) for s in shards]
        self.num_nodes = len(shards)
        if nodes is None:
            nodes = range(self.num_nodes)
        if (
            not isinstance(nodes, range)
            or len(nodes) == 0
            or nodes.step != 1
            or not (0 <= nodes.start and nodes.stop <= self.num_nodes)
        ):
            raise ValueError(f"nodes must be a non-empty range within [0, {self.num_nodes}), got {nodes!r}")
        self.nodes = nodes
        self.num_samples = int(sum(len(s) for s in shards))
        self.num_batches = num_batches
        self.epoch = 0
        self.start_batch = 0
        # After a resume, the epoch of the loader state wins over the numbers Lightning passes to set_epoch before
        # the first iteration (it passes the completed epoch's and then the next one's number after a checkpoint at
        # an epoch end, a number one short after one that max_steps cut short); later epochs keep the offset from
        # the last number passed before that iteration.
        self._pinned_epoch: int | None = None
        self._requested_epoch: int | None = None
        self._epoch_offset = 0
        # Lightning calls ``set_epoch`` on ``dataloader.batch_sampler.sampler``, not on the batch sampler.
        self.sampler = self

    @property
    def shards(self) -> list[np.ndarray]:
        """Per-node index arrays (int64), as given."""
        return list(self._shards)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next ``iter(self)`` yields.

        Args:
            epoch: Epoch number ``>= 0``.

        Raises:
            ValueError: ``epoch`` is negative or not an integer.
        """
        epoch = _check_int("epoch", epoch, 0)
        self._requested_epoch = epoch
        if self._pinned_epoch is None:  # while pinned, the next iteration decides (see __iter__)
            self.epoch = epoch + self._epoch_offset

    def resume(self, epoch: int, start_batch: int) -> None:
        """Make the next iteration start at batch ``start_batch`` of ``epoch``, whatever epoch number the trainer
        passes to the next :meth:`set_epoch` (later epochs follow on from this one)."""
        self.epoch = _check_int("epoch", epoch, 0)
        self.start_batch = _check_int("start_batch", start_batch, 0)
        self._pinned_epoch = self.epoch
        self._requested_epoch = None

    def __len__(self) -> int:
        if self.num_batches is not None:
            return self.num_batches
        return math.ceil(self.num_samples / (self.num_nodes * self.batch_size))

    def _passes(self, wanted: list[tuple[int, int]]) -> list[np.ndarray]:
        """The permuted shards of the ``(node, pass)`` pairs ``wanted``: pass ``p`` of node ``i`` is ``shard_i``
        permuted by ``torch.randperm`` under a generator seeded with ``derive_seed(seed, SAMPLER_STREAM, i, p)``
        (the seeds of all pairs derived at once, :func:`~lightning_mosaic.seeding.derive_seeds`)."""
        if not wanted:
            return []
        seeds = derive_seeds(self.seed, SAMPLER_STREAM, last=np.array(wanted, dtype=np.int64)).tolist()
        generator, out = torch.Generator(), []
        for (node, _), seed in zip(wanted, seeds):
            shard = self._shards[node]
            generator.manual_seed(seed)  # the state of a fresh generator with that seed
            out.append(shard[torch.randperm(len(shard), generator=generator).numpy()])
        return out

    def node_stream(self, node: int, start: int, length: int) -> list[int]:
        """Positions ``[start, start + length)`` of node ``node``'s infinite index stream.

        Args:
            node: Node index in ``[0, n)``.
            start: First stream position, ``>= 0``.
            length: Number of positions, ``>= 0``.

        Returns:
            ``length`` dataset indices from node ``node``'s shard.
        """
        if length <= 0:
            return []
        return self._read([node], start, length, {}).tolist()

    def _read(self, nodes: list[int], start: int, length: int, cache: dict[int, tuple[int, np.ndarray]]) -> np.ndarray:
        """Positions ``[start, start + length)`` (``length >= 1``) of the streams of ``nodes``, node-major: an int64
        array of ``len(nodes) * length`` dataset indices. ``cache`` maps a node to its latest pass ``(pass,
        permuted shard)``: read first (a pass that continues from the previous batch is not permuted again) and
        updated. The passes of all nodes are permuted together (:meth:`_passes`)."""
        spans = []  # per node: (shard size, first pass, last pass)
        wanted: list[tuple[int, int]] = []
        for node in nodes:
            size = self._sizes[node]
            first, last = start // size, (start + length - 1) // size
            cached = cache.get(node)
            wanted.extend((node, p) for p in range(first, last + 1) if cached is None or cached[0] != p)
            spans.append((size, first, last))
        made = dict(zip(wanted, self._passes(wanted)))
        out = []
        for node, (size, first, last) in zip(nodes, spans):
            cached = cache.get(node)
            parts = [
                cached[1] if cached is not None and cached[0] == p else made[node, p] for p in range(first, last + 1)
            ]
            cache[node] = (last, parts[-1])
            stream = parts[0] if len(parts) == 1 else np.concatenate(parts)
            offset = start - first * size
            out.append(stream[offset : offset + length])
        return np.concatenate(out)

    def __iter__(self) -> Iterator[list[int]]:
        if self._pinned_epoch is not None:  # the first iteration after a resume: the loader state's epoch
            if self._requested_epoch is not None:
                self._epoch_offset = self._pinned_epoch - self._requested_epoch
            self.epoch, self._pinned_epoch = self._pinned_epoch, None
        num_batches = len(self)
        first = self.epoch * num_batches
        start, self.start_batch = self.start_batch, 0  # a resume offset applies to one iteration only
        cache: dict[int, tuple[int, np.ndarray]] = {}
        nodes = list(self.nodes)
        for step in range(first + start, first + num_batches):
            yield self._read(nodes, step * self.batch_size, self.batch_size, cache).tolist()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_nodes={self.num_nodes}, batch_size={self.batch_size}, "
            f"seed={self.seed}, num_batches={len(self)}, epoch={self.epoch})"
        )


class NodeDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`NodeBatchSampler` that resumes mid-epoch exactly.

    Lightning saves the ``state_dict`` of such a loader in the checkpoint and hands it back to
    ``load_state_dict`` before iterating again; the sampler then starts at the first batch not yet trained on.

    The batches trained on in the current epoch are counted from optimizer steps: every iteration (epoch) records
    its first batch and the step count at its start, and a step consumes ``batches_per_step`` batches (Lightning's
    ``accumulate_grad_batches``), at most the epoch's length. This is exact whenever a checkpoint is written after an
    optimizer step or at an epoch end (a step in the middle of gradient accumulation is not resumable anyway: the
    accumulated gradients are not saved).

    Args:
        *args: As for ``DataLoader``; ``batch_sampler`` must be a :class:`NodeBatchSampler`.
        steps: Callable returning ``(optimizer steps so far, batches per optimizer step)`` (the datamodule passes
            ``(trainer.global_step, trainer.accumulate_grad_batches)``); without it the state records the epoch only.
        **kwargs: As for ``DataLoader``.

    Raises:
        TypeError: If ``batch_sampler`` is not a :class:`NodeBatchSampler`.
    """

    def __init__(self, *args: Any, steps: Callable[[], tuple[int, int]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, NodeBatchSampler):
            raise TypeError(f"batch_sampler must be a NodeBatchSampler, got {type(self.batch_sampler).__name__}")
        self._steps = steps
        self._epoch_start: tuple[int, int] | None = None  # (first batch, optimizer steps) of the current iteration

    def __iter__(self) -> Any:
        sampler = self.batch_sampler
        assert isinstance(sampler, NodeBatchSampler)
        if self._steps is not None:
            self._epoch_start = (sampler.start_batch, self._steps()[0])  # read before the sampler clears start_batch
        return super().__iter__()

    def trained_batches(self) -> int:
        """Batches of the current epoch trained on so far (0 before the first iteration or without ``steps``)."""
        if self._steps is None or self._epoch_start is None:
            return 0
        first, steps_at_start = self._epoch_start
        steps, batches_per_step = self._steps()
        return min(len(self.batch_sampler), first + (steps - steps_at_start) * batches_per_step)

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": e, "batches": k}``: k batches of epoch e have been trained on."""
        sampler = self.batch_sampler
        assert isinstance(sampler, NodeBatchSampler)
        return {"epoch": sampler.epoch, "batches": self.trained_batches()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Make the next iteration continue after batch ``state["batches"]`` of epoch ``state["epoch"]``."""
        sampler = self.batch_sampler
        assert isinstance(sampler, NodeBatchSampler)
        epoch, batches = int(state["epoch"]), int(state["batches"])
        # A complete epoch (a checkpoint written at its end) is resumed as such: Lightning restarts it with nothing
        # left to train on, then starts the next one.
        sampler.resume(epoch, min(batches, len(sampler)))


_NOT_NODE_MAJOR = (
    "use batch_sampler=NodeBatchSampler(...) together with collate_fn=NodeBatchCollate(n) on the DataLoader, "
    "or NodeDataModule.from_datasets(...), which builds both"
)


class NodeBatchCollate:
    """Collate function that reshapes node-major batches from ``(n * B, ...)`` to ``(n, B, ...)``.

    Calls ``collate_fn`` (default :func:`torch.utils.data.default_collate`) on the ``n * B`` samples of a batch
    (node 0's ``B`` samples, then node 1's, ..., as :class:`NodeBatchSampler` yields them) and reshapes the first
    dimension of every tensor in the result (nested tuples, lists, namedtuples and mappings included) to
    ``(n, B, ...)``; the structure stays the one ``collate_fn`` returns. Non-tensor leaves (e.g. the list of
    strings ``default_collate`` makes of string fields) are passed through unchanged, still flat. A plain class, so
    it pickles for ``num_workers > 0`` (if ``collate_fn`` does).

    A batch a dataset's ``__getitems__`` returned as :class:`~lightning_mosaic.data.GatheredSamples` (datasets
    holding their samples as tensors: :class:`~lightning_mosaic.data.TensorRowsDataset`, ``RatingsDataset``,
    ``InMemoryImageDataset``) is already collated: with ``default_collate`` its tensors are only reshaped (views, no
    copy), the same batch as collating the samples one by one.

    Only the batch size can be checked: a batch of ``n * B`` samples that were not drawn node-major (e.g. a plain
    shuffled ``DataLoader(batch_size=n * B)``) cannot be told apart and would silently mix the nodes' data.

    Args:
        num_nodes: Number of nodes ``n >= 1``.
        collate_fn: Collate function applied to the list of ``n * B`` samples before reshaping; its tensors must
            have one row per sample (first dimension ``n * B``). ``None``: ``default_collate``.

    Raises:
        ValueError: ``num_nodes < 1``. At call time: the batch does not hold a multiple of ``num_nodes`` samples,
            or a tensor of the collated result does not have one row per sample (first dimension ``n * B``); the
            message names the tensor's place in the batch and says to use ``NodeBatchSampler`` with
            ``NodeBatchCollate`` (or ``NodeDataModule.from_datasets``).
        TypeError: ``collate_fn`` is not callable.

    Example:
        >>> collate = NodeBatchCollate(2)
        >>> x, y = collate([(torch.zeros(3), i) for i in range(4)])
        >>> tuple(x.shape), tuple(y.shape)
        ((2, 2, 3), (2, 2))
    """

    def __init__(self, num_nodes: int, collate_fn: Callable[[list[Any]], Any] | None = None) -> None:
        self.num_nodes = _check_int("num_nodes", num_nodes, 1)
        if collate_fn is not None and not callable(collate_fn):
            raise TypeError(f"collate_fn must be callable or None; got {collate_fn!r} ({type(collate_fn).__name__})")
        self.collate_fn = collate_fn

    def _reshape(self, value: Any, samples: int, where: str) -> Any:
        if isinstance(value, torch.Tensor):
            if value.ndim == 0 or value.shape[0] != samples:
                raise ValueError(
                    f"cannot split {where} of shape {tuple(value.shape)} into num_nodes={self.num_nodes} per-node "
                    f"batches: collate_fn must return tensors with one row per sample (first dimension {samples}, "
                    f"the batch's num_nodes * B samples); {_NOT_NODE_MAJOR}"
                )
            return value.reshape(self.num_nodes, samples // self.num_nodes, *value.shape[1:])
        if isinstance(value, Mapping):
            items = {k: self._reshape(v, samples, f"{where}[{k!r}]") for k, v in value.items()}
            return type(value)(items)  # type: ignore[call-arg]
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
            return type(value)(*(self._reshape(v, samples, f"{where}.{f}") for f, v in zip(value._fields, value)))
        if isinstance(value, (tuple, list)):
            return type(value)(self._reshape(v, samples, f"{where}[{i}]") for i, v in enumerate(value))
        return value

    def __call__(self, batch: list[Any]) -> Any:
        """Collate ``batch`` (``n * B`` samples, node-major) and reshape every tensor to ``(n, B, ...)``.

        Raises:
            ValueError: ``len(batch)`` is not a positive multiple of ``num_nodes``, or a collated tensor does not
                have ``len(batch)`` rows.
        """
        samples = len(batch)
        if samples == 0 or samples % self.num_nodes != 0:
            raise ValueError(
                f"NodeBatchCollate(num_nodes={self.num_nodes}) got a batch of {samples} samples, not num_nodes * B "
                f"node-major samples (B per node); {_NOT_NODE_MAJOR}"
            )
        return self._reshape(collate(batch, self.collate_fn), samples, "the collated batch")

    def __repr__(self) -> str:
        extra = "" if self.collate_fn is None else f", collate_fn={self.collate_fn!r}"
        return f"{type(self).__name__}(num_nodes={self.num_nodes}{extra})"
