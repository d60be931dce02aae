"""The CIFAR family (CIFAR-10, CIFAR-100): torchvision's canonical files or an ImageFolder tree, decoded into memory."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_mosaic.data.base import NodeDataModule
from lightning_mosaic.data.images import InMemoryImageDataset, RandomCropFlip, load_image_folder_split

__all__ = ["CIFARDataModule"]

log = logging.getLogger(__name__)


class CIFARDataModule(NodeDataModule):
    """Shared loading of a node-partitioned CIFAR dataset (32x32 RGB images); subclasses name the dataset.

    Looks under ``data_dir``, in this order, for

    1. torchvision's canonical python files, ``data_dir/<torchvision_folder>`` (read with
       ``torchvision.datasets.<torchvision_dataset>(root=data_dir)``, which also verifies their checksums);
    2. an ImageFolder tree ``data_dir/train/<class>/*`` plus ``data_dir/test/<class>/*``;
    3. the same tree one level down, ``data_dir/<archive_folder>/{train,test}/<class>/*``.

    Class folders must be names of :attr:`classes`; labels follow that canonical order. JPEG/PNG/WebP files are
    decoded once, at :meth:`setup`, into a uint8 tensor ``(N, 3, 32, 32)`` kept in memory (about 184 MB for 60,000
    images). Inputs are normalized on the fly with mean = std = 0.5 per channel (the GN-LeNet reference,
    decentralizepy), so values lie in ``[-1, 1]``. ``augment=True`` adds a random crop (32, zero padding 4) and a
    random horizontal flip to training samples only (:class:`~lightning_mosaic.data.images.RandomCropFlip`).

    Batches: training ``x`` ``(n, B, 3, 32, 32)`` float32, ``y`` ``(n, B)`` int64; evaluation ``x``
    ``(B_eval, 3, 32, 32)``, ``y`` ``(B_eval,)``.

    Args:
        data_dir: Directory to look in (and download to, with ``download=True``).
        num_nodes: Number of nodes ``n >= 2``.
        alpha: Dirichlet concentration ``> 0``; ``float('inf')`` or ``"iid"`` for an IID split.
        batch_size: Per-node training mini-batch size ``B >= 1``.
        download: If no layout is found, download the canonical files with torchvision (needs internet).
        augment: Random crop (padding 4) and horizontal flip on training samples.
        seed: Non-negative seed of the partition, the per-node shuffles and the test subset.
        min_samples: Minimum number of training samples per node, ``>= 1``.
        eval_batch_size: Batch size of the validation and test loaders.
        test_subset: If given, evaluate on a fixed seeded subset of this many test samples.
        num_workers: DataLoader worker processes.
        steps_per_epoch: Training batches per epoch; default one pass over the training set.

    Raises:
        ValueError: An argument is out of range (at construction); at :meth:`setup`, an unknown class folder
            or an unreadable or wrongly sized image (the message names the folder or file).
        FileNotFoundError: At :meth:`prepare_data` / :meth:`setup`, no layout was found and downloading is off
            or failed; the message lists every path looked for.
    """

    input_shape = (3, 32, 32)
    #: Class names in label order (label ``k`` is ``classes[k]``); subclasses set it.
    classes: ClassVar[tuple[str, ...]] = ()
    #: Name in messages, e.g. ``"CIFAR-10"``.
    dataset_name: ClassVar[str] = ""
    #: Folder of torchvision's canonical files, e.g. ``"cifar-10-batches-py"``.
    torchvision_folder: ClassVar[str] = ""
    #: Name of the ``torchvision.datasets`` class, e.g. ``"CIFAR10"``.
    torchvision_dataset: ClassVar[str] = ""
    #: Folder one level down that may hold the ImageFolder tree, e.g. ``"cifar10"``.
    archive_folder: ClassVar[str] = ""

    def __init__(
        self,
        data_dir: str | Path,
        num_nodes: int,
        alpha: float | str = 0.1,
        batch_size: int = 32,
        *,
        download: bool = False,
        augment: bool = False,
        seed: int = 0,
        min_samples: int = 1,
        eval_batch_size: int = 256,
        test_subset: int | None = None,
        num_workers: int = 0,
        steps_per_epoch: int | None = None,
    ) -> None:
        super().__init__(
            num_nodes,
            alpha,
            batch_size,
            seed=seed,
            min_samples=min_samples,
            eval_batch_size=eval_batch_size,
            test_subset=test_subset,
            num_workers=num_workers,
            steps_per_epoch=steps_per_epoch,
        )
        if not isinstance(data_dir, (str, Path)) or str(data_dir) == "":
            raise ValueError(f"data_dir must be a non-empty path (str or Path); got {data_dir!r}")
        if len(self.classes) != self.num_classes:
            raise TypeError(f"{type(self).__name__} must set classes to its {self.num_classes} class names")
        self.data_dir = Path(data_dir).expanduser()
        self.download = bool(download)
        self.augment = bool(augment)
        #: Which layout :meth:`setup` read: ``"torchvision"`` or the ImageFolder root, set by :meth:`setup`.
        self.source: str | None = None

    # ------------------------------------------------------------------ locating the data
    def _candidates(self) -> list[tuple[str, list[Path]]]:
        root = self.data_dir
        return [
            ("torchvision", [root / self.torchvision_folder]),
            ("imagefolder", [root / "train", root / "test"]),
            ("imagefolder", [root / self.archive_folder / "train", root / self.archive_folder / "test"]),
        ]

    def _find(self) -> tuple[str, Path] | None:
        for kind, paths in self._candidates():
            if all(p.is_dir() for p in paths):
                return kind, paths[0].parent if kind == "imagefolder" else self.data_dir
        return None

    def _looked_for(self) -> str:
        lines = []
        for kind, paths in self._candidates():
            what = f"torchvision {self.dataset_name} files" if kind == "torchvision" else "ImageFolder train/test trees"
            lines.append(f"  - {' and '.join(str(p) for p in paths)}  ({what})")
        return "\n".join(lines)

    def _torchvision_class(self):
        import torchvision.datasets

        return getattr(torchvision.datasets, self.torchvision_dataset)

    def _download(self) -> None:
        dataset = self._torchvision_class()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            dataset(root=str(self.data_dir), train=True, download=True)
            dataset(root=str(self.data_dir), train=False, download=True)
        except Exception as exc:
            raise FileNotFoundError(
                f"{self.dataset_name} not found under {self.data_dir} and the torchvision download failed "
                f"({type(exc).__name__}: {exc}). Looked for:\n{self._looked_for()}\n"
                "Download it elsewhere and point data_dir at it, or extract an ImageFolder archive there."
            ) from exc

    def _locate(self) -> tuple[str, Path]:
        found = self._find()
        if found is not None:
            return found
        if not self.download:
            raise FileNotFoundError(
                f"{self.dataset_name} not found under {self.data_dir}. Looked for:\n{self._looked_for()}\n"
                "Downloading is off (download=False): pass download=True to fetch the canonical files with "
                "torchvision, or extract an ImageFolder tree (train/<class>/*, test/<class>/*) into data_dir."
            )
        created = not self.data_dir.exists()
        try:
            self._download()
        except BaseException:
            if created and self.data_dir.is_dir() and not any(self.data_dir.iterdir()):
                self.data_dir.rmdir()  # leave no empty folder behind a failed download
            raise
        found = self._find()
        if found is None:  # pragma: no cover - torchvision reported success but left no files
            raise FileNotFoundError(
                f"the torchvision download reported success but {self.dataset_name} is still missing. Looked for:\n"
                f"{self._looked_for()}"
            )
        return found

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Download the canonical files if no layout exists and ``download=True`` (runs on one process).

        Raises:
            FileNotFoundError: No layout found and downloading is off or failed.
        """
        self._locate()

    def _load(self) -> tuple[Dataset, np.ndarray, Dataset]:
        kind, root = self._locate()
        start = time.perf_counter()
        if kind == "torchvision":
            dataset = self._torchvision_class()
            splits = []
            for train in (True, False):
                ds = dataset(root=str(root), train=train, download=False)
                images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
                splits.append((images, np.asarray(ds.targets, dtype=np.int64)))
            (train_x, train_y), (test_x, test_y) = splits
        else:
            shape, name = self.input_shape, self.dataset_name
            train_x, train_y = load_image_folder_split(root / "train", self.classes, shape, name)
            test_x, test_y = load_image_folder_split(root / "test", self.classes, shape, name)
        self.source = kind if kind == "torchvision" else str(root)
        log.info(
            "%s loaded from %s: %d train / %d test images in %.1f s",
            self.dataset_name,
            self.source,
            len(train_y),
            len(test_y),
            time.perf_counter() - start,
        )
        transform = RandomCropFlip(32, padding=4) if self.augment else None
        train = InMemoryImageDataset(train_x, train_y, transform=transform)
        test = InMemoryImageDataset(test_x, test_y)
        return train, train_y, test
