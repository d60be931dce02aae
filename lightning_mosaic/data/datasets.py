"""Your own data: split any map-style ``Dataset`` (or a ``LightningDataModule``'s datasets) over the nodes.

Built by :meth:`NodeDataModule.from_datasets <lightning_mosaic.data.NodeDataModule.from_datasets>` and
:meth:`NodeDataModule.from_datamodule <lightning_mosaic.data.NodeDataModule.from_datamodule>`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import ConcatDataset, DataLoader, Dataset, IterableDataset, Subset

from lightning_mosaic.data.base import NodeDataModule
from lightning_mosaic.data.partition import _resolve_alpha

__all__ = ["DatasetsDataModule"]

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


def _as_array(values: Any) -> np.ndarray:
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


def _attribute_labels(dataset: Any, name: str) -> tuple[np.ndarray | None, list[str]]:
    """Labels of ``dataset`` from a ``targets``/``labels`` attribute, through ``Subset`` and ``ConcatDataset``.

    Returns:
        ``(labels, notes)``: the raw label array of shape ``(len(dataset),)`` or ``None``, and why candidate
        attributes were not used (for the error message when labels are needed).
    """
    if isinstance(dataset, Subset):
        parent, notes = _attribute_labels(dataset.dataset, f"{name}.dataset")
        if parent is None:
            return None, notes
        return parent[np.asarray(dataset.indices, dtype=np.int64)], notes
    if isinstance(dataset, ConcatDataset):
        parts, notes = [], []
        for k, part in enumerate(dataset.datasets):
            found, part_notes = _attribute_labels(part, f"{name}.datasets[{k}]")
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
            array = _as_array(value)
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
    array = _as_array(values)
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


class DatasetsDataModule(NodeDataModule):
    """Node datamodule over datasets you already have: any map-style training set split across ``n`` nodes.

    Built by :meth:`NodeDataModule.from_datasets` (see there for the arguments: ``num_nodes``, ``alpha``,
    ``batch_size`` and the other :class:`NodeDataModule` arguments come through ``**kwargs``) and
    :meth:`NodeDataModule.from_datamodule`. It is a full :class:`NodeDataModule`: per-node training batches from
    :class:`~lightning_mosaic.data.NodeBatchSampler` (node blocks in multi-process runs, exact mid-epoch resume
    through :class:`~lightning_mosaic.data.NodeDataLoader`), :attr:`partition`, and :meth:`node_label_histogram`
    when training labels exist.

    Samples keep the dataset's own format: a training batch is ``collate_fn`` (default ``default_collate``) of the
    ``n * B`` samples, with every tensor reshaped to ``(n, B, ...)`` (dicts, tuples and namedtuples keep their
    structure); evaluation batches are the plain ``(B_eval, ...)`` batches of ``test_dataset`` (and of
    ``val_dataset`` for validation, if given) through the same ``collate_fn``.

    Attributes:
        classes: After label resolution (construction for array or attribute labels, :meth:`setup` for a callable),
            the distinct label values in sorted order: class ``k`` of :attr:`train_labels` is ``classes[k]``;
            ``None`` without labels.
    """

    _num_classes_from_data = True

    def __init__(
        self,
        train_dataset: Dataset,
        test_dataset: Dataset,
        *,
        labels: LabelSource = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        val_dataset: Dataset | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("alpha", "iid")
        super().__init__(**kwargs)
        size = check_map_style("train_dataset", train_dataset)
        check_map_style("test_dataset", test_dataset)
        if val_dataset is not None:
            check_map_style("val_dataset", val_dataset)
        if collate_fn is not None and not callable(collate_fn):
            raise ValueError(f"collate_fn must be callable or None; got {collate_fn!r} ({type(collate_fn).__name__})")
        if size < self.num_nodes * self.min_samples:
            raise ValueError(
                f"train_dataset has {size} samples, too few for num_nodes={self.num_nodes} with "
                f"min_samples={self.min_samples} each; use fewer nodes or more data"
            )
        self.collate_fn = collate_fn
        self.classes: tuple[Any, ...] | None = None
        self._datasets = (train_dataset, test_dataset, val_dataset)
        self._label_fn: Callable[[Any], Hashable] | None = None
        self._codes: np.ndarray | None = None
        if callable(labels):
            self._label_fn = labels
        elif labels is not None:
            if isinstance(labels, (str, bytes)):
                raise ValueError(f"labels must be an array-like, a callable or None; got the string {labels!r}")
            array = _as_array(labels)
            if array.ndim != 1 or len(array) != size:
                raise ValueError(
                    f"labels must have one entry per training sample, shape ({size},) for the {size} samples of "
                    f"train_dataset; got shape {array.shape}"
                )
            self._set_labels(array, "labels")
        else:
            found, notes = _attribute_labels(train_dataset, "train_dataset")
            if found is not None:
                self._set_labels(found, "the labels read from train_dataset")
            elif not math.isinf(_resolve_alpha(self.alpha)):
                where = f" ({'; '.join(notes)})" if notes else ""
                raise ValueError(
                    f"alpha={self.alpha!r} splits the training set by label, but no labels were found: "
                    f"labels=None and train_dataset ({type(train_dataset).__name__}) has no "
                    f"{' or '.join(LABEL_ATTRIBUTES)} attribute of length {size}{where}. Pass labels= "
                    f"(an array of {size} labels, or a callable labels(sample) -> label applied to every "
                    "train_dataset[i]), or alpha='iid' for a split that needs no labels"
                )

    def _set_labels(self, values: Any, name: str) -> None:
        self._codes, self.classes = encode_labels(values, name)
        self.num_classes = len(self.classes)

    @property
    def val_dataset(self) -> Dataset:
        """The validation set: ``val_dataset`` if given, else :attr:`test_dataset` (after :meth:`setup`)."""
        self._require_setup("val_dataset")
        return self._datasets[2] if self._datasets[2] is not None else self.test_dataset

    def _load(self) -> tuple[Dataset, np.ndarray | None, Dataset]:
        train, test, _ = self._datasets
        if self._label_fn is not None and self._codes is None:
            function = self._label_fn
            self._set_labels([function(train[i]) for i in range(len(train))], "the values of labels(sample)")
        return train, self._codes, test

    def val_dataloader(self) -> DataLoader:
        """Batches ``(B_eval, ...)`` of :attr:`val_dataset`, in a fixed order, collated with ``collate_fn``."""
        self._require_setup("val_dataloader()")
        return self._eval_loader(self.val_dataset)

    def __repr__(self) -> str:
        train, test, _ = self._datasets
        return (
            f"{type(self).__name__}(train_dataset={type(train).__name__}[{len(train)}], "  # type: ignore[arg-type]
            f"test_dataset={type(test).__name__}[{len(test)}], num_nodes={self.num_nodes}, "  # type: ignore[arg-type]
            f"alpha={self.alpha!r}, batch_size={self.batch_size}, seed={self.seed})"
        )


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
