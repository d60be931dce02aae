"""Download-free default data: scikit-learn's bundled handwritten digits."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from lightning_mosaic.data.base import NodeDataModule

__all__ = ["DigitsDataModule"]


class DigitsDataModule(NodeDataModule):
    """Node-partitioned scikit-learn ``load_digits()``: 1,797 real 8x8 handwritten digits, 10 classes.

    The images ship with scikit-learn (no download). Pixel values ``0..16`` are scaled to float32 in
    ``[0, 1]`` and shaped ``(1, 8, 8)``. A seeded stratified ``train_test_split`` holds out ``test_fraction``
    of the samples (360 of 1,797 by default) as the shared test set; the rest is split across nodes.
    Everything lives in memory as :class:`~torch.utils.data.TensorDataset` (about 0.5 MB).

    Batches: training ``x`` ``(n, B, 1, 8, 8)`` float32, ``y`` ``(n, B)`` int64; evaluation ``x``
    ``(B_eval, 1, 8, 8)``, ``y`` ``(B_eval,)``.

    Args:
        *args: Positional arguments of :class:`~lightning_mosaic.data.NodeDataModule` (``num_nodes``, ``alpha``,
            ``batch_size``).
        test_fraction: Fraction of the 1,797 samples held out for testing, in ``(0, 1)``; both sides must keep
            at least one sample of every class.
        **kwargs: The other arguments of :class:`~lightning_mosaic.data.NodeDataModule` (``num_nodes``,
            ``alpha``, ``batch_size``, ``seed``, ``min_samples``, ``eval_batch_size``, ``test_subset``,
            ``num_workers``, ``steps_per_epoch``). ``seed`` also seeds the train/test split.

    Raises:
        ValueError: An argument is out of range (see :class:`NodeDataModule`), or ``test_fraction`` is not in
            ``(0, 1)`` or leaves fewer than 10 samples (one per class) on either side.

    Example:
        >>> dm = DigitsDataModule(num_nodes=4, alpha=0.5, batch_size=8)
        >>> dm.setup()
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), tuple(y.shape)
        ((4, 8, 1, 8, 8), (4, 8))
    """

    num_classes = 10
    input_shape = (1, 8, 8)
    #: Total number of samples in ``sklearn.datasets.load_digits()``.
    num_samples_total = 1797

    def __init__(self, *args: Any, test_fraction: float = 0.2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, Real):
            raise ValueError(f"test_fraction must be a float in (0, 1); got {test_fraction!r}")
        fraction = float(test_fraction)
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"test_fraction must be a float in (0, 1); got {test_fraction!r}")
        n_test = math.ceil(fraction * self.num_samples_total)
        if n_test < self.num_classes or self.num_samples_total - n_test < self.num_classes:
            raise ValueError(
                f"test_fraction={test_fraction!r} gives {n_test} test and {self.num_samples_total - n_test} "
                f"train samples; a stratified split needs num_classes={self.num_classes} on each side"
            )
        self.test_fraction = fraction

    def _load(self) -> tuple[Dataset, np.ndarray, Dataset]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)  # (N, 1, 8, 8)
        labels = np.asarray(digits.target, dtype=np.int64)
        train_idx, test_idx = train_test_split(
            np.arange(len(labels)),
            test_size=self.test_fraction,
            stratify=labels,
            random_state=self.seed % 2**32,
        )
        train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
        y = torch.from_numpy(labels)
        train = TensorDataset(images[train_idx], y[train_idx])
        test = TensorDataset(images[test_idx], y[test_idx])
        return train, labels[train_idx], test
