"""Your own data, the parts that need no datamodule: where a dataset's labels are, checks of map-style datasets, and
the datasets of a user's ``LightningDataModule``.

Used by :class:`~lightning_mosaic.data.base.DatasetsDataModule`, which
:meth:`NodeDataModule.from_datasets <lightning_mosaic.data.NodeDataModule.from_datasets>` and
:meth:`NodeDataModule.from_datamodule <lightning_mosaic.data.NodeDataModule.from_datamodule>` build.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import ConcatDataset, DataLoader, IterableDataset, Subset

__all__ = ["LabelSource", "attribute_labels", "check_map_style", "datasets_of_datamodule", "encode_labels"]

#: Dataset attributes read as training labels when ``labels=None`` (torchvision datasets have ``targets``).
LABEL_ATTRIBUTES: tuple[str, ...] = ("targets", "labels")

LabelSource = Sequence[Hashable] | np.ndarray | torch.Tensor | Callable[[Any], Hashable] | None


def check_map_style(name: str, dataset: Any) -> int:
    """Return ``len(dataset)`` if ``dataset`` is a non-empty map-style dataset, else raise naming ``name``.

    Raises:
        ValueError: ``dataset`` is an ``IterableDataset``, a ``DataLoader``, has no ``__getitem__`` or
            ``__len__``, or is empty.
    """
    kind = type(dataset).__name__
    if isinstance(dataset, DataLoader):
        raise ValueError(f"{name} must be a map-style dataset, got a DataLoader; pass its .dataset instead")
    if isinstance(dataset, IterableDataset) or not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        why = " (an IterableDataset has no indices to assign to nodes)" if isinstance(dataset, IterableDataset) else ""
        raise ValueError(
            f"{name} must be a map-style dataset with __getitem__ and __len__ (e.g. a torch.utils.data.Dataset, "
            f"TensorDataset or torchvision ImageFolder); got {kind}{why}"
        )
    size = len(dataset)
    if size == 0:
        raise ValueError(f"{name} is empty ({kind} of length 0); it needs at least one sample")
    return size


def as_label_array(values: Any) -> np.ndarray:
    """``values`` as a NumPy array; a sequence of tuples (or other ragged values) as a 1-D object array."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        return values
    values = list(values)
    try:
        array = np.asarray(values)
    except ValueError:  # ragged
        array = None
    if array is None or (array.ndim > 1 and all(isinstance(v, tuple) for v in values)):
        return np.fromiter(values, dtype=object, count=len(values))
    return array


def attribute_labels(dataset: Any, name: str) -> tuple[np.ndarray | None, list[str]]:
    """Labels of ``dataset`` from a ``targets``/``labels`` attribute, through ``Subset`` and ``ConcatDataset``.

    Returns:
        ``(labels, notes)``: the raw label array of shape ``(len(dataset),)`` or ``None``, and why candidate
        attributes were not used (for the error message when labels are needed).
    """
    if isinstance(dataset, Subset):
        parent, notes = attribute_labels(dataset.dataset, f"{name}.dataset")
        if parent is None:
            return None, notes
        return parent[np.asarray(dataset.indices, dtype=np.int64)], notes
    if isinstance(dataset, ConcatDataset):
        parts, notes = [], []
        for k, part in enumerate(dataset.datasets):
            found, part_notes = attribute_labels(part, f"{name}.datasets[{k}]")
            parts.append(found)
            notes += part_notes
        if any(p is None for p in parts):
            return None, notes
        return np.concatenate(parts), notes  # type: ignore[arg-type]
    notes = []
    for attribute in LABEL_ATTRIBUTES:
        value = getattr(dataset, attribute, None)
        if value is None or callable(value):
            continue
        try:
            array = as_label_array(value)
        except Exception:  # e.g. ragged
            notes.append(f"{name}.{attribute} is not an array")
            continue
        if array.ndim != 1 or len(array) != len(dataset):
            notes.append(f"{name}.{attribute} has shape {array.shape}, not ({len(dataset)},)")
            continue
        return array, notes
    return None, notes


def encode_labels(values: Any, name: str = "labels") -> tuple[np.ndarray, tuple[Any, ...]]:
    """Map hashable label values to class indices ``0..C-1`` in sorted order of the values.

    Args:
        values: 1-D array-like (or tensor) of hashable, mutually comparable labels, e.g. ints or strings.
        name: Name in error messages.

    Returns:
        ``(codes, classes)``: int64 ``(N,)`` with ``classes[codes[i]] == values[i]``, and the ``C`` distinct
        values in sorted order.

    Raises:
        ValueError: ``values`` is not 1-D, or its values are not hashable or cannot be sorted.
    """
    array = as_label_array(values)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D, one label per training sample; got shape {array.shape}"
            + (" (one-hot or scores? pass class indices, e.g. labels.argmax(1))" if array.ndim == 2 else "")
        )
    if array.dtype.kind in "biufUS":
        classes, codes = np.unique(array, return_inverse=True)
        return codes.reshape(-1).astype(np.int64), tuple(classes.tolist())
    items = array.tolist()
    try:
        classes_list = sorted(set(items))
    except TypeError as exc:
        raise ValueError(f"{name} must hold hashable, mutually comparable values (ints, strings, ...): {exc}") from exc
    index = {value: k for k, value in enumerate(classes_list)}
    return np.fromiter((index[v] for v in items), dtype=np.int64, count=len(items)), tuple(classes_list)


def datasets_of_datamodule(datamodule: pl.LightningDataModule) -> dict[str, Any]:
    """Run ``prepare_data`` and ``setup`` of a user's datamodule and return what ``from_datasets`` needs.

    Returns:
        ``{"train_dataset", "test_dataset", "val_dataset", "collate_fn", "batch_size", "eval_batch_size"}``.

    Raises:
        TypeError: ``datamodule`` is not a ``LightningDataModule``, or one of its loader hooks returns something
            other than one ``DataLoader``.
        ValueError: It has neither ``val_dataloader`` nor ``test_dataloader``.
    """
    if not isinstance(datamodule, pl.LightningDataModule):
        raise TypeError(f"datamodule must be a LightningDataModule; got {type(datamodule).__name__}")
    name = type(datamodule).__name__

    def loader(hook: str) -> DataLoader | None:
        if not is_overridden(hook, datamodule, pl.LightningDataModule):
            return None
        result = getattr(datamodule, hook)()
        if not isinstance(result, DataLoader):
            raise TypeError(f"{name}.{hook}() must return one DataLoader for from_datamodule; got {type(result)}")
        return result

    if not is_overridden("train_dataloader", datamodule, pl.LightningDataModule):
        raise ValueError(f"{name} has no train_dataloader(); from_datamodule takes its training set from there")
    datamodule.prepare_data()
    datamodule.setup("fit")
    train = loader("train_dataloader")
    assert train is not None
    val = loader("val_dataloader")
    if is_overridden("test_dataloader", datamodule, pl.LightningDataModule):
        datamodule.setup("test")
    test = loader("test_dataloader")
    if val is None and test is None:
        raise ValueError(
            f"{name} has neither val_dataloader() nor test_dataloader(); from_datamodule needs one for evaluation"
        )
    evaluation = test if test is not None else val
    assert evaluation is not None
    batched = train.batch_size is not None or train.batch_sampler is not None
    batch_size = train.batch_size or getattr(train.batch_sampler, "batch_size", None)
    return {
        "train_dataset": train.dataset,
        "test_dataset": evaluation.dataset,
        "val_dataset": val.dataset if val is not None and test is not None else None,
        "collate_fn": train.collate_fn if batched else None,
        "batch_size": batch_size,
        "eval_batch_size": (val if val is not None else evaluation).batch_size,
    }
