"""Batched fetch: a dataset that holds its samples as tensors hands a whole batch over already collated.

``DataLoader`` calls a dataset's ``__getitems__(indices)`` (when it has one) and passes the result to the collate
function. Per-sample tuples cost Python objects per sample and ``default_collate`` stacks them again (a round of 943
MovieLens nodes x 256 ratings is 241,408 samples). A dataset whose samples are rows of tensors can instead
gather the rows with one index operation per tensor and return :class:`GatheredSamples`: still the sequence of the
batch's samples (any collate function may read it sample by sample), but also holding exactly what
``default_collate`` returns for them, which :class:`~lightning_mosaic.data.NodeBatchCollate` takes as it is.

:class:`TensorRowsDataset` is such a ``TensorDataset``; :func:`batched` gives a plain ``TensorDataset`` that
fetch path (the data modules' loaders apply it with the default collate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset, default_collate

__all__ = ["GatheredSamples", "TensorRowsDataset", "batched", "collate", "gather_rows"]


class GatheredSamples(Sequence):
    """The samples of one batch, fetched together, held in their collated form.

    Returned by a dataset's ``__getitems__``. ``collated`` is exactly what ``default_collate`` returns for these
    samples (same structure, dtypes and values; e.g. a list of tensors with one row per sample for tuple samples),
    so a collate function that would call ``default_collate`` can use it as it is. The sequence itself (``len``,
    indexing, iteration) yields the samples one by one, built by ``samples()`` on first use, for any other collate
    function.

    Args:
        collated: ``default_collate`` of the batch's samples.
        size: Number of samples ``>= 1``.
        samples: Called at most once, with no argument, to build the list of the ``size`` samples.

    Raises:
        ValueError: At first per-sample access, ``samples()`` returned a list of another length than ``size``.
    """

    __slots__ = ("_list", "_samples", "_size", "collated")

    def __init__(self, collated: Any, size: int, samples: Callable[[], list[Any]]) -> None:
        self.collated = collated
        self._size = int(size)
        self._samples = samples
        self._list: list[Any] | None = None

    def _materialize(self) -> list[Any]:
        if self._list is None:
            built = list(self._samples())
            if len(built) != self._size:
                raise ValueError(f"GatheredSamples of {self._size} samples: samples() built {len(built)}")
            self._list = built
        return self._list

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: Any) -> Any:
        return self._materialize()[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._materialize())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._size} samples)"


def collate(batch: Sequence[Any], collate_fn: Callable[[list[Any]], Any] | None = None) -> Any:
    """``collate_fn(batch)``; for a :class:`GatheredSamples` batch and ``default_collate`` (or ``None``, standing
    for it), its ``collated`` as it is, which is the same result without touching the samples.

    Args:
        batch: The samples of a batch (a list, or what a dataset's ``__getitems__`` returned).
        collate_fn: Collate function; ``None``: ``default_collate``.

    Returns:
        The collated batch.
    """
    if isinstance(batch, GatheredSamples) and (collate_fn is None or collate_fn is default_collate):
        return batch.collated
    return (default_collate if collate_fn is None else collate_fn)(batch)


def gather_rows(tensors: Sequence[Tensor], indices: Sequence[int] | Tensor) -> GatheredSamples:
    """Rows ``indices`` of every tensor: the samples ``(tensors[0][i], tensors[1][i], ...)`` of a batch.

    Args:
        tensors: Tensors with the same first dimension ``N`` (one row per sample).
        indices: ``B >= 1`` row indices in ``[0, N)`` (ints or an integer tensor).

    Returns:
        :class:`GatheredSamples` whose ``collated`` is the list ``[tensors[0][indices], tensors[1][indices], ...]``
        (what ``default_collate`` makes of the tuple samples: a list) and whose samples are those tuples.

    Raises:
        IndexError: An index is out of range (from ``index_select``).
    """
    index = torch.as_tensor(indices, dtype=torch.int64)
    columns = [t.index_select(0, index.to(t.device)) for t in tensors]
    return GatheredSamples(columns, len(index), lambda: list(zip(*(c.unbind(0) for c in columns))))


class TensorRowsDataset(TensorDataset):
    """A ``TensorDataset`` whose batched fetch gathers every tensor's rows at once (:func:`gather_rows`).

    Items are those of ``TensorDataset``: ``dataset[i] = (tensors[0][i], tensors[1][i], ...)``;
    ``__getitems__`` returns the same samples as :class:`GatheredSamples`.

    Args:
        *tensors: Tensors with the same first dimension.

    Raises:
        AssertionError: The tensors' first dimensions differ (``TensorDataset``'s check).
    """

    def __getitems__(self, indices: list[int]) -> GatheredSamples:
        return gather_rows(self.tensors, indices)


def batched(dataset: Dataset) -> Dataset:
    """``dataset`` with the batched fetch where it is a plain ``TensorDataset`` (or a ``Subset`` of one), else
    ``dataset`` itself.

    A ``TensorDataset`` (exactly that class: a subclass may define its own items) becomes a
    :class:`TensorRowsDataset` over the same tensors (no copy), whose items are the same; a ``Subset`` of one a
    ``Subset`` of that with the same indices (``Subset.__getitems__`` passes the batch to its dataset's).
    """
    if type(dataset) is TensorDataset:
        return TensorRowsDataset(*dataset.tensors)
    if type(dataset) is Subset:
        inner = batched(dataset.dataset)
        return dataset if inner is dataset.dataset else Subset(inner, dataset.indices)
    return dataset
