"""Base LightningDataModule for node-partitioned (decentralized) training data."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Hashable
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_mosaic.data.datasets import (
    LABEL_ATTRIBUTES,
    LabelSource,
    as_label_array,
    attribute_labels,
    check_map_style,
    datasets_of_datamodule,
    encode_labels,
)
from lightning_mosaic.data.gather import batched, collate
from lightning_mosaic.data.partition import _check_int, _resolve_alpha, dirichlet_partition
from lightning_mosaic.data.sampler import NodeBatchCollate, NodeBatchSampler, NodeDataLoader
from lightning_mosaic.distributed.strategy import local_nodes

__all__ = ["DatasetsDataModule", "NodeDataModule"]


class NodeDataModule(pl.LightningDataModule):
    """Base data module: Dirichlet split of a training set across ``n`` nodes, one shared test set.

    Training batches come from :class:`~lightning_mosaic.data.NodeBatchSampler` and
    :class:`~lightning_mosaic.data.NodeBatchCollate`: ``x`` has shape ``(n, B, ...)`` and ``y`` shape
    ``(n, B)`` (int64), one mini-batch per node drawn from that node's own shard. Validation and test batches
    come from the same global test set for every node: ``x`` of shape ``(B_eval, ...)`` and ``y`` of shape
    ``(B_eval,)``. Datasets holding their samples as tensors hand every batch over already collated
    (:class:`~lightning_mosaic.data.GatheredSamples`; a plain ``TensorDataset`` too, through
    :func:`~lightning_mosaic.data.gather.batched`): the same batches as collating sample by sample, without the
    per-sample objects.

    Your own data: :meth:`from_datasets` splits any map-style ``Dataset`` over the nodes and keeps its sample
    format (dicts, tuples of several tensors, ...: every tensor comes out ``(n, B, ...)``); :meth:`from_datamodule`
    does the same with the datasets of an ordinary ``LightningDataModule``.

    Subclasses set the class attributes :attr:`num_classes` (and, optionally, :attr:`input_shape`) and
    implement :meth:`_load`. :meth:`setup` loads once and partitions the training labels with
    :func:`~lightning_mosaic.data.dirichlet_partition` (override :meth:`_partition_train` to assign other units,
    e.g. MovieLens users, to nodes).

    Args:
        num_nodes: Number of nodes ``n >= 2``.
        alpha: Dirichlet concentration ``> 0`` of the label split; ``float('inf')`` or ``"iid"`` for an IID
            split.
        batch_size: Per-node training mini-batch size ``B >= 1``.
        seed: Non-negative seed of the partition, the per-node shuffles and the test subset (and of a
            subclass's own seeded steps, e.g. a train/test split).
        min_samples: Minimum number of training samples per node, ``>= 1`` (a node needs data to train).
        eval_batch_size: Batch size ``>= 1`` of the validation and test loaders.
        test_subset: If given (``>= 1``), evaluate on a fixed seeded subset of this many test samples.
        num_workers: DataLoader worker processes, ``>= 0``.
        steps_per_epoch: Training batches per epoch ``>= 1``; default: one pass over the training set
            (``ceil(N_train / (n * B))``).

    Raises:
        ValueError: Any argument is out of the range given above (raised by ``__init__``, before loading
            data); ``test_subset`` exceeds the test set size (raised by :meth:`setup`).
    """

    #: Number of classes; subclasses must set it (available right after ``__init__``).
    num_classes: ClassVar[int] = 0
    #: Shape ``(C, H, W)`` of one input sample, if fixed.
    input_shape: ClassVar[tuple[int, ...] | None] = None
    #: Collate function of the training loader (wrapped in ``NodeBatchCollate``) and of the evaluation loaders;
    #: ``None``: ``default_collate``.
    collate_fn: Callable[[list[Any]], Any] | None = None
    #: True where ``num_classes`` is only known from the data (set by ``_load``), so ``__init__`` does not check it.
    _num_classes_from_data: ClassVar[bool] = False

    def __init__(
        self,
        num_nodes: int,
        alpha: float | str = 0.1,
        batch_size: int = 32,
        *,
        seed: int = 0,
        min_samples: int = 1,
        eval_batch_size: int = 256,
        test_subset: int | None = None,
        num_workers: int = 0,
        steps_per_epoch: int | None = None,
    ) -> None:
        super().__init__()
        self.num_nodes = _check_int("num_nodes", num_nodes, 2)
        _resolve_alpha(alpha)
        self.alpha = alpha
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seed = _check_int("seed", seed, 0)
        self.min_samples = _check_int("min_samples", min_samples, 1)
        self.eval_batch_size = _check_int("eval_batch_size", eval_batch_size, 1)
        self.test_subset = None if test_subset is None else _check_int("test_subset", test_subset, 1)
        self.num_workers = _check_int("num_workers", num_workers, 0)
        self.steps_per_epoch = None if steps_per_epoch is None else _check_int("steps_per_epoch", steps_per_epoch, 1)
        if self.num_classes < 1 and not self._num_classes_from_data:
            raise TypeError(f"{type(self).__name__} must set the class attribute num_classes to an int >= 1")
        self._train: Dataset | None = None
        self._train_labels: np.ndarray | None = None
        self._test: Dataset | None = None
        self._partition: list[np.ndarray] | None = None

    # ------------------------------------------------------------------ your own data
    @classmethod
    def from_datasets(  # type: ignore[override]
        cls,
        train_dataset: Dataset,
        test_dataset: Dataset,
        *,
        num_nodes: int,
        alpha: float | str = "iid",
        batch_size: int = 32,
        labels: LabelSource = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        val_dataset: Dataset | None = None,
        **kwargs: Any,
    ) -> NodeDataModule:
        """Split any map-style training set across ``num_nodes`` nodes, keeping its sample format.

        Unlike ``LightningDataModule.from_datasets``, the second positional argument is the test set (the shared
        evaluation set of every node). Training batches are ``collate_fn`` of node-major ``n * B`` samples with
        every tensor reshaped to ``(n, B, ...)``: a dataset of ``(image, label)`` pairs gives ``x`` ``(n, B, C, H,
        W)`` and ``y`` ``(n, B)``; one of dicts ``{"image", "label"}`` gives a dict of ``(n, B, ...)`` tensors;
        tuples of several tensors stay tuples. Evaluation batches are the plain ``(B_eval, ...)`` batches of
        ``test_dataset`` (validation: of ``val_dataset`` if given) with the same ``collate_fn``.

        Where the labels of the Dirichlet split come from (``labels``):

        * ``None``: a ``targets`` or ``labels`` attribute of ``train_dataset`` of length ``len(train_dataset)``
          (torchvision datasets such as ``ImageFolder`` have ``targets``), also through ``Subset`` (its
          ``indices`` into the parent's labels) and ``ConcatDataset``; else the data is unlabelled, and only
          ``alpha="iid"`` can split it;
        * an array-like (list, NumPy array, tensor) of ``len(train_dataset)`` labels;
        * a callable ``labels(sample) -> label``, applied at :meth:`setup` to every ``train_dataset[i]`` (so it
          loads every training sample once: prefer an array when the labels are at hand).

        Labels may be any hashable, mutually comparable values (ints, strings, ...); they are mapped to classes
        ``0..C-1`` in sorted order (``classes[k]`` is the value of class ``k``; ``num_classes = C``).

        Args:
            train_dataset: Map-style training set (``__getitem__`` and ``__len__``), split across the nodes.
            test_dataset: Map-style evaluation set shared by all nodes (``test_subset`` selects from it).
            num_nodes: Number of nodes ``n >= 2``.
            alpha: Dirichlet concentration ``> 0`` of the label split (needs labels); ``"iid"`` (default) or
                ``float('inf')`` for an IID split, which needs none.
            batch_size: Per-node training mini-batch size ``B >= 1``.
            labels: ``None``, an array-like or a callable, see above.
            collate_fn: Collate function of all loaders (default ``default_collate``); its tensors must have one
                row per sample.
            val_dataset: Map-style validation set; default: ``test_dataset``.
            **kwargs: The other arguments of :class:`NodeDataModule` (``seed``, ``min_samples``,
                ``eval_batch_size``, ``test_subset``, ``num_workers``, ``steps_per_epoch``).

        Returns:
            A :class:`~lightning_mosaic.data.base.DatasetsDataModule`: a :class:`NodeDataModule` for
            ``Trainer.fit`` (node blocks per process, exact mid-epoch resume, :attr:`partition`,
            :meth:`node_label_histogram` when there are labels).

        Raises:
            ValueError: Raised here, before any data is read: an argument of :class:`NodeDataModule` is out of
                range; ``train_dataset``, ``test_dataset`` or ``val_dataset`` is not map-style (an
                ``IterableDataset``, a ``DataLoader``, ...) or is empty; ``train_dataset`` has fewer than
                ``num_nodes * min_samples`` samples; ``labels`` is not 1-D of length ``len(train_dataset)`` or its
                values cannot be sorted; a finite ``alpha`` without labels (the message says how to pass them);
                ``collate_fn`` is not callable. At :meth:`setup`: the values of a callable ``labels`` cannot be
                sorted, ``test_subset`` exceeds the test set, or the partition cannot honour ``min_samples``.

        Example:
            >>> import torch
            >>> from torch.utils.data import TensorDataset
            >>> train = TensorDataset(torch.randn(100, 3), torch.randn(100, 5), torch.arange(100) % 4)
            >>> dm = NodeDataModule.from_datasets(train, train, num_nodes=4, alpha=0.5, batch_size=2,
            ...                                   labels=train.tensors[2])
            >>> dm.setup()
            >>> [tuple(t.shape) for t in next(iter(dm.train_dataloader()))]
            [(4, 2, 3), (4, 2, 5), (4, 2)]
        """
        return DatasetsDataModule(
            train_dataset,
            test_dataset,
            num_nodes=num_nodes,
            alpha=alpha,
            batch_size=batch_size,
            labels=labels,
            collate_fn=collate_fn,
            val_dataset=val_dataset,
            **kwargs,
        )

    @classmethod
    def from_datamodule(
        cls,
        datamodule: pl.LightningDataModule,
        *,
        num_nodes: int,
        alpha: float | str = "iid",
        labels: LabelSource = None,
        **kwargs: Any,
    ) -> NodeDataModule:
        """Split the training set of an ordinary ``LightningDataModule`` across ``num_nodes`` nodes.

        Calls ``datamodule.prepare_data()`` and ``datamodule.setup("fit")`` (and ``setup("test")`` when it defines
        ``test_dataloader``), then takes the dataset and ``collate_fn`` of its ``train_dataloader()`` and the
        datasets of its ``val_dataloader()`` and ``test_dataloader()``, and builds the same as
        :meth:`from_datasets`. The user loader's sampler and shuffling are not used: every node draws from its
        own shard. Evaluation: ``test_dataloader()``'s dataset (else ``val_dataloader()``'s) is the test set;
        with both, ``val_dataloader()``'s is the validation set.

        Args:
            datamodule: A ``LightningDataModule`` with ``train_dataloader()`` and at least one of
                ``val_dataloader()`` / ``test_dataloader()``, each returning one ``DataLoader`` over a map-style
                dataset.
            num_nodes: Number of nodes ``n >= 2``.
            alpha: Dirichlet concentration ``> 0`` (needs labels) or ``"iid"`` (default).
            labels: As for :meth:`from_datasets`.
            **kwargs: As for :meth:`from_datasets`. Defaults taken from the user's loaders: ``batch_size`` (the
                training loader's), ``eval_batch_size`` (the validation loader's, else the test loader's),
                ``collate_fn`` (the training loader's).

        Returns:
            A :class:`NodeDataModule` as from :meth:`from_datasets`.

        Raises:
            TypeError: ``datamodule`` is not a ``LightningDataModule``, or a loader hook returns something other
                than one ``DataLoader``.
            ValueError: The datamodule has no ``train_dataloader()``, or neither ``val_dataloader()`` nor
                ``test_dataloader()``; anything :meth:`from_datasets` raises.
        """
        found = datasets_of_datamodule(datamodule)
        for name in ("batch_size", "eval_batch_size", "collate_fn"):
            value = found.pop(name)
            if value is not None:
                kwargs.setdefault(name, value)
        return cls.from_datasets(**found, num_nodes=num_nodes, alpha=alpha, labels=labels, **kwargs)

    # ------------------------------------------------------------------ subclass hook
    def _load(self) -> tuple[Dataset, np.ndarray, Dataset]:
        """Load the data.

        Returns:
            ``(train_dataset, train_labels, test_dataset)``: map-style datasets whose items are
            ``(x: Tensor, y: int)`` (or anything the loaders' ``collate_fn`` takes), and the int labels of the
            training set, shape ``(N_train,)``, values in ``[0, num_classes)``; ``None`` for unlabelled data, which
            only an IID ``alpha`` can split.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Load the datasets (once) and partition the training set across nodes.

        Args:
            stage: Lightning stage (``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or ``None``); all
                stages prepare everything, which is cheap after the first call.

        Raises:
            ValueError: The loaded labels do not match the training set or ``num_classes``; ``test_subset`` is
                larger than the test set; the partition cannot honour ``min_samples``.
        """
        if self._train is not None:
            return
        train, labels, test = self._load()
        if labels is None:
            partition = self._partition_unlabelled(len(train))  # type: ignore[arg-type]
        else:
            labels = self._check_loaded_labels(train, labels)
            partition = self._partition_train(labels)
        if self.test_subset is not None:
            test_size = len(test)  # type: ignore[arg-type]
            if self.test_subset > test_size:
                raise ValueError(
                    f"test_subset={self.test_subset} exceeds the test set size ({test_size}); "
                    f"use test_subset <= {test_size} or None for the whole test set"
                )
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 1]))
            indices = np.sort(rng.choice(test_size, size=self.test_subset, replace=False))
            test = Subset(test, indices.tolist())
        self._train, self._train_labels, self._test = train, labels, test
        self._partition = partition

    def _check_loaded_labels(self, train: Dataset, labels: Any) -> np.ndarray:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(train):  # type: ignore[arg-type]
            raise ValueError(
                f"{type(self).__name__}._load returned {labels.shape} train labels for {len(train)} "  # type: ignore[arg-type]
                "training samples; expected shape (N_train,)"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"{type(self).__name__}._load returned labels in [{labels.min()}, {labels.max()}]; "
                f"expected values in [0, {self.num_classes})"
            )
        return labels.astype(np.int64)

    def _partition_unlabelled(self, size: int) -> list[np.ndarray]:
        """IID split of ``size`` unlabelled training samples (the IID split depends on the sample count only)."""
        if not math.isinf(_resolve_alpha(self.alpha)):
            raise ValueError(f"alpha={self.alpha!r} needs training labels, but {type(self).__name__} has none")
        dummy = np.zeros(size, dtype=np.int64)
        return dirichlet_partition(dummy, self.num_nodes, "iid", seed=self.seed, min_samples=self.min_samples)

    def _partition_train(self, labels: np.ndarray) -> list[np.ndarray]:
        """Split the training indices across nodes (called once by :meth:`setup`, after :meth:`_load`).

        Default: :func:`~lightning_mosaic.data.dirichlet_partition` of ``labels`` with ``alpha``, ``seed`` and
        ``min_samples``. Override for another unit of assignment (e.g. users for MovieLens).

        Args:
            labels: Training labels, int64 ``(N_train,)``.

        Returns:
            ``num_nodes`` sorted int64 index arrays covering ``range(N_train)`` exactly once.
        """
        return dirichlet_partition(labels, self.num_nodes, self.alpha, seed=self.seed, min_samples=self.min_samples)

    def _require_setup(self, what: str) -> None:
        if self._train is None:
            raise RuntimeError(f"{type(self).__name__}.{what} is available after setup(); call setup() first")

    # ------------------------------------------------------------------ properties
    @property
    def partition(self) -> list[np.ndarray]:
        """Per-node sorted int64 training indices, ``num_nodes`` arrays (after :meth:`setup`)."""
        self._require_setup("partition")
        assert self._partition is not None
        return self._partition

    @property
    def train_dataset(self) -> Dataset:
        """The whole training set (after :meth:`setup`)."""
        self._require_setup("train_dataset")
        assert self._train is not None
        return self._train

    @property
    def test_dataset(self) -> Dataset:
        """The shared evaluation set, after ``test_subset`` selection (after :meth:`setup`)."""
        self._require_setup("test_dataset")
        assert self._test is not None
        return self._test

    @property
    def train_labels(self) -> np.ndarray:
        """Training labels, int64 of shape ``(N_train,)`` (after :meth:`setup`).

        Raises:
            RuntimeError: Called before :meth:`setup`, or the training set has no labels (``from_datasets`` found
                none and was given none).
        """
        self._require_setup("train_labels")
        if self._train_labels is None:
            raise RuntimeError(
                f"{type(self).__name__} has no training labels: none were found on the training set and none "
                "were given; pass labels= to NodeDataModule.from_datasets / from_datamodule"
            )
        return self._train_labels

    def node_label_histogram(self) -> np.ndarray:
        """Number of training samples of each class on each node.

        Returns:
            int64 array of shape ``(num_nodes, num_classes)``; row ``i`` sums to ``len(partition[i])``.

        Raises:
            RuntimeError: Called before :meth:`setup`, or the training set has no labels.
        """
        self._require_setup("node_label_histogram()")
        labels = self.train_labels
        counts = [np.bincount(labels[idx], minlength=self.num_classes) for idx in self.partition]
        return np.stack(counts).astype(np.int64)

    # ------------------------------------------------------------------ loaders
    def _loader_kwargs(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}

    def train_dataloader(self) -> DataLoader:
        """Per-node training batches ``(x: (n, B, ...), y: (n, B) int64)``, ``len = steps_per_epoch``.

        In a multi-process run, only this process's nodes: ``(m, B, ...)`` (see :class:`NodeBatchSampler`). A plain
        ``TensorDataset`` (or a ``Subset`` of one) is read through :func:`~lightning_mosaic.data.gather.batched`
        (same items, each batch gathered with one index operation per tensor) unless ``collate_fn`` is set."""
        self._require_setup("train_dataloader()")
        nodes = self._local_nodes()
        sampler = NodeBatchSampler(
            self.partition, self.batch_size, seed=self.seed, num_batches=self.steps_per_epoch, nodes=nodes
        )
        return NodeDataLoader(
            self._batched(self.train_dataset),
            batch_sampler=sampler,
            collate_fn=NodeBatchCollate(len(nodes), self.collate_fn),
            steps=self._optimizer_steps,
            **self._loader_kwargs(),
        )

    def _local_nodes(self) -> range:
        """The nodes this process trains: all n, or the strategy's block in a multi-process run."""
        return local_nodes(getattr(self, "trainer", None), self.num_nodes)

    def _optimizer_steps(self) -> tuple[int, int]:
        """``(trainer.global_step, trainer.accumulate_grad_batches)``, from which :class:`NodeDataLoader` counts the
        batches trained on for exact resume; ``(0, 1)`` outside a trainer."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_step, trainer.accumulate_grad_batches

    def _batched(self, dataset: Dataset) -> Dataset:
        """``dataset`` with the gathered fetch of :func:`~lightning_mosaic.data.gather.batched` where that gives the
        collated batch, i.e. with the default collate (a user's collate reads the samples one by one anyway)."""
        return batched(dataset) if self.collate_fn is None else dataset

    def _eval_loader(self, dataset: Dataset | None = None) -> DataLoader:
        self._require_setup("val_dataloader()")
        return DataLoader(
            self._batched(self.test_dataset if dataset is None else dataset),
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=functools.partial(collate, collate_fn=self.collate_fn),
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> DataLoader:
        """Batches ``(x: (B_eval, ...), y: (B_eval,) int64)`` of the shared test set, in a fixed order."""
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        """Same as :meth:`val_dataloader` (one shared test set for all nodes)."""
        return self._eval_loader()

    def predict_dataloader(self) -> DataLoader:
        """Same as :meth:`test_dataloader`: ``mosaic predict`` runs every node's model and the averaged model on the
        shared test set (:meth:`~lightning_mosaic.MosaicModule.predict_step`)."""
        return self._eval_loader()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_nodes={self.num_nodes}, alpha={self.alpha!r}, "
            f"batch_size={self.batch_size}, seed={self.seed})"
        )


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
            array = as_label_array(labels)
            if array.ndim != 1 or len(array) != size:
                raise ValueError(
                    f"labels must have one entry per training sample, shape ({size},) for the {size} samples of "
                    f"train_dataset; got shape {array.shape}"
                )
            self._set_labels(array, "labels")
        else:
            found, notes = attribute_labels(train_dataset, "train_dataset")
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
