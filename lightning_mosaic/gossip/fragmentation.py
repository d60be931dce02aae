"""Fragmentation: a fixed partition of a model's d flat coordinates into K fragments.

Pure tensor code (no Lightning). Every node derives the same fragmentation from the same seed and keeps it for the
whole run (Mosaic Learning, arXiv 2602.04352, Section 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, get_args

import torch
from torch import Tensor

from lightning_mosaic._validation import check_int

FragmentationName = Literal["random", "contiguous", "layer"]
FRAGMENTATIONS: tuple[str, ...] = get_args(FragmentationName)


@dataclass(frozen=True, eq=False)
class FragmentGroup:
    """Fragments of equal size ``q``, laid out as one ``(n, K_g * q)`` block: fragment ``fragments[g]`` occupies
    block columns ``g * q .. (g + 1) * q - 1``.

    Attributes:
        size: q, the number of coordinates of each fragment in the group.
        fragments: ``(K_g,)`` int64, the fragment numbers, increasing.
        columns: The block's ``K_g * q`` coordinates of the flat vector in block order: a ``slice`` when they are one
            contiguous range, else an int64 tensor.
    """

    size: int
    fragments: Tensor
    columns: slice | Tensor


@dataclass(frozen=True, eq=False)
class Fragmentation:
    """A partition P_1..P_K of the coordinates 0..d-1 of the flat parameter vector.

    Attributes:
        kind: How the partition was made: ``"random"``, ``"contiguous"`` or ``"layer"``.
        assignment: ``(d,)`` int64 tensor; ``assignment[c]`` is the fragment of coordinate ``c``.
        indices: K sorted ``(d_k,)`` int64 tensors, the coordinates of each fragment.
        slices: When every fragment is one contiguous range (always for ``"contiguous"``), the K ranges as
            ``slice`` objects, so that mixing can work on views; otherwise ``None``.
    """

    kind: str
    assignment: Tensor
    indices: tuple[Tensor, ...]
    slices: tuple[slice, ...] | None

    @property
    def num_fragments(self) -> int:
        """K, the number of fragments."""
        return len(self.indices)

    @property
    def num_coordinates(self) -> int:
        """d, the number of coordinates (scalar parameters) partitioned."""
        return int(self.assignment.numel())

    @property
    def sizes(self) -> list[int]:
        """Number of coordinates in each fragment, ``[d_1, ..., d_K]``."""
        return [int(i.numel()) for i in self.indices]

    @cached_property
    def groups(self) -> tuple[FragmentGroup, ...]:
        """The fragments grouped by size, for kernels that process all equal-sized fragments in one call.

        ``"random"`` and ``"contiguous"`` partitions have at most two sizes (``d // K`` and ``d // K + 1``), so at
        most two groups; ``"layer"`` ones up to K. Computed once per fragmentation.
        """
        by_size: dict[int, list[int]] = {}
        for k, idx in enumerate(self.indices):
            by_size.setdefault(int(idx.numel()), []).append(k)
        groups = []
        for size, members in sorted(by_size.items(), reverse=True):
            columns = torch.cat([self.indices[k] for k in members])
            first = int(columns[0])
            contiguous = bool(torch.equal(columns, torch.arange(first, first + columns.numel(), device=columns.device)))
            groups.append(
                FragmentGroup(
                    size,
                    torch.tensor(members, dtype=torch.long, device=columns.device),
                    slice(first, first + columns.numel()) if contiguous else columns,
                )
            )
        return tuple(groups)

    def to(self, device: torch.device | str) -> Fragmentation:
        """Return the same fragmentation with its index tensors on ``device``."""
        return Fragmentation(
            self.kind,
            self.assignment.to(device),
            tuple(i.to(device) for i in self.indices),
            self.slices,
        )


def make_fragmentation(
    tensor_sizes: Sequence[int],
    num_fragments: int,
    kind: str = "random",
    *,
    seed: int = 0,
) -> Fragmentation:
    """Partition the flat parameter vector of a model into ``num_fragments`` fragments.

    The flat vector is the concatenation of all trainable tensors in ``named_parameters()`` order, so
    ``d = sum(tensor_sizes)``. The three schemes:

    * ``"random"`` (default): coordinates assigned to fragments by a seeded random permutation; fragment sizes differ
      by at most 1 (Mosaic Learning, arXiv 2602.04352).
    * ``"contiguous"``: K near-equal chunks of the flat vector (as in Shatter).
    * ``"layer"``: whole tensors, greedily balanced by size (largest first, each to the currently smallest
      fragment; ties to the lowest fragment index); needs K <= number of tensors. Deterministic, ``seed`` unused.

    Args:
        tensor_sizes: Number of elements of each trainable tensor, in ``named_parameters()`` order.
        num_fragments: K >= 1. K = 1 is Epidemic Learning (the whole model is one fragment).
        kind: ``"random"``, ``"contiguous"`` or ``"layer"``.
        seed: Seed of the ``torch.Generator`` that draws the ``"random"`` permutation. Every node must use the same.

    Returns:
        The :class:`Fragmentation`.

    Raises:
        ValueError: If ``tensor_sizes`` is empty or has a size < 1, if ``kind`` is unknown, if ``num_fragments`` < 1
            or > d, or, for ``"layer"``, > the number of tensors.
    """
    sizes = [int(s) for s in tensor_sizes]
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f"tensor_sizes must be a non-empty list of positive sizes, got {sizes[:10]}")
    if kind not in FRAGMENTATIONS:
        raise ValueError(f"fragmentation must be one of {FRAGMENTATIONS}, got {kind!r}")
    d = sum(sizes)
    check_int("fragments (K)", num_fragments, 1)
    if num_fragments > d:
        raise ValueError(f"fragments (K) must be at most the number of parameters d = {d}, got {num_fragments}")
    if kind == "layer" and num_fragments > len(sizes):
        raise ValueError(
            f"fragments (K) must be at most the number of parameter tensors ({len(sizes)}) with "
            f"fragmentation='layer', got {num_fragments}"
        )

    if kind == "contiguous":
        bounds = torch.tensor_split(torch.arange(d), num_fragments)
        slices = tuple(slice(int(b[0]), int(b[-1]) + 1) for b in bounds)
        return _from_indices(kind, d, list(bounds), slices)
    if kind == "random":
        generator = torch.Generator().manual_seed(seed)
        perm = torch.randperm(d, generator=generator)
        chunks = [c.sort().values for c in torch.tensor_split(perm, num_fragments)]
        return _from_indices(kind, d, chunks, None)

    # layer: longest-processing-time greedy balancing of whole tensors.
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    loads = [0] * num_fragments
    members: list[list[int]] = [[] for _ in range(num_fragments)]
    for t in sorted(range(len(sizes)), key=lambda t: (-sizes[t], t)):
        k = min(range(num_fragments), key=lambda k: (loads[k], k))
        loads[k] += sizes[t]
        members[k].append(t)
    chunks = [torch.cat([torch.arange(offsets[t], offsets[t + 1]) for t in sorted(m)]) for m in members]
    return _from_indices(kind, d, chunks, None)


def _from_indices(kind: str, d: int, chunks: list[Tensor], slices: tuple[slice, ...] | None) -> Fragmentation:
    assignment = torch.empty(d, dtype=torch.long)
    for k, idx in enumerate(chunks):
        assignment[idx] = k
    if slices is None and all(int(c[-1] - c[0]) + 1 == c.numel() for c in chunks):
        slices = tuple(slice(int(c[0]), int(c[-1]) + 1) for c in chunks)
    return Fragmentation(kind, assignment, tuple(c.to(torch.long) for c in chunks), slices)
