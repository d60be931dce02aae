"""The CIFAR family (CIFAR-10, CIFAR-100): torchvision's canonical files or an ImageFolder tree, decoded into memory."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_mosaic.data.base import NodeDataModule
from lightning_mosaic.data.cache import (
    CacheResult,
    cache_directories,
    check_cache_dir,
    fingerprint_files,
    load_or_build,
)
from lightning_mosaic.data.download import download_into
from lightning_mosaic.data.images import (
    InMemoryImageDataset,
    RandomCropFlip,
    decode_image_files,
    list_image_folder_split,
)

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
    images).

    **Decoded-data cache.** Decoding the 60,000 JPEGs of CIFAR-10 takes 6-14 s on 2 shared cores, and reading
    torchvision's canonical files 2-3 s (it checks their MD5 twice per load, 1.5 s). So :meth:`setup` writes the
    decoded arrays (185 MB) once to a cache file and reads them back on later starts: 0.5-1.3 s on 2 shared cores
    for the JPEG tree (about 0.1 s of reading, 0.3-0.5 s to ``stat`` its 60,000 files, 0.1 s to list them),
    0.1-0.2 s for the canonical files. The entry is keyed by the dataset, layout, class names and a fingerprint of
    every source file's relative path, size and modification time: adding, removing, renaming or rewriting a file
    is a miss, and the entry is rebuilt and replaced. Entries are written to a temporary file and atomically
    renamed, so a crash never leaves a partial entry that would be read. File format and details:
    :mod:`lightning_mosaic.data.cache`. ``cache_dir`` says where:

    * ``"auto"`` (default): ``data_dir/.lightning_mosaic_cache/``; if that cannot be written (read-only data),
      the user cache folder ``$XDG_CACHE_HOME/lightning_mosaic`` (else ``~/.cache/lightning_mosaic``); if neither
      can be written, a warning names both and the data is used uncached;
    * a folder (created if missing): only there; if it cannot be written, a warning names it and the data is
      used uncached (an entry already there is still read, e.g. from a read-only shared folder);
    * ``None`` or ``False``: no cache, decode every time.

    Inputs are normalized on the fly with mean = std = 0.5 per channel (the GN-LeNet reference,
    decentralizepy), so values lie in ``[-1, 1]``. ``augment=True`` adds a random crop (32, zero padding 4) and a
    random horizontal flip to training samples only (:class:`~lightning_mosaic.data.images.RandomCropFlip`).

    Batches: training ``x`` ``(n, B, 3, 32, 32)`` float32, ``y`` ``(n, B)`` int64; evaluation ``x``
    ``(B_eval, 3, 32, 32)``, ``y`` ``(B_eval,)``.

    Args:
        data_dir: Directory to look in (and download to, with ``download=True``).
        *args: Positional arguments of :class:`~lightning_mosaic.data.NodeDataModule` after ``data_dir``
            (``num_nodes``, ``alpha``, ``batch_size``).
        download: If no layout is found, download the canonical files with torchvision (needs internet).
        augment: Random crop (padding 4) and horizontal flip on training samples.
        cache_dir: Where to cache the decoded arrays: ``"auto"`` (or ``True``), a folder, or ``None`` / ``False``
            for no cache (see above).
        **kwargs: The other arguments of :class:`~lightning_mosaic.data.NodeDataModule` (``num_nodes``,
            ``alpha``, ``batch_size``, ``seed``, ``min_samples``, ``eval_batch_size``, ``test_subset``,
            ``num_workers``, ``steps_per_epoch``).

    Raises:
        ValueError: An argument is out of range or ``cache_dir`` is not one of the forms above (at construction);
            at :meth:`setup`, an unknown class folder, an unreadable or wrongly sized image (the message names
            the folder or file), or a ``cache_dir`` that exists and is not a folder.
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
        *args: Any,
        download: bool = False,
        augment: bool = False,
        cache_dir: bool | str | Path | None = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(data_dir, (str, Path)) or str(data_dir) == "":
            raise ValueError(f"data_dir must be a non-empty path (str or Path); got {data_dir!r}")
        if len(self.classes) != self.num_classes:
            raise TypeError(f"{type(self).__name__} must set classes to its {self.num_classes} class names")
        self.data_dir = Path(data_dir).expanduser()
        self.download = bool(download)
        self.augment = bool(augment)
        #: ``"auto"``, a folder, or ``None`` (no cache), as normalized from the ``cache_dir`` argument.
        self.cache_dir: str | Path | None = check_cache_dir(cache_dir)
        #: The cache entry :meth:`setup` read or wrote (``None``: no cache used), and whether it was read.
        self.cache_file: Path | None = None
        self.cache_hit = False
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

        def fetch(folder: Path) -> None:
            dataset(root=str(folder), train=True, download=True)
            dataset(root=str(folder), train=False, download=True)

        try:
            download_into(self.data_dir, fetch)  # nothing is written under data_dir unless the download completes
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
        self._download()
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

    def _read_torchvision(self, root: Path) -> dict[str, np.ndarray]:
        dataset = self._torchvision_class()
        arrays = {}
        for split, train in (("train", True), ("test", False)):
            ds = dataset(root=str(root), train=train, download=False)
            arrays[f"{split}_images"] = np.ascontiguousarray(np.asarray(ds.data).transpose(0, 3, 1, 2))
            arrays[f"{split}_labels"] = np.asarray(ds.targets, dtype=np.int64)
        return arrays

    def _load_arrays(self, kind: str, root: Path) -> CacheResult:
        """The decoded ``{train,test}_{images,labels}`` arrays, from the cache when it is valid."""
        if kind == "torchvision":
            source = root / self.torchvision_folder
            with os.scandir(source) as entries:
                files = sorted(e.path for e in entries if not e.name.startswith(".") and e.is_file())

            def build() -> dict[str, np.ndarray]:
                return self._read_torchvision(root)

        else:
            source = root
            listings = {
                split: list_image_folder_split(root / split, self.classes, self.dataset_name)
                for split in ("train", "test")
            }
            files = [f for names, _ in listings.values() for f in names]

            def build() -> dict[str, np.ndarray]:
                arrays = {}
                for split, (names, labels) in listings.items():
                    arrays[f"{split}_images"] = decode_image_files(names, self.input_shape).numpy()
                    arrays[f"{split}_labels"] = labels
                return arrays

        directories = cache_directories(self.cache_dir, self.data_dir)
        if not directories:
            return CacheResult(build(), None, False)
        key = {
            "dataset": self.dataset_name,
            "layout": kind,
            "classes": list(self.classes),
            "image_shape": list(self.input_shape),
            "files": len(files),
            "fingerprint": fingerprint_files(source, files),
        }
        stem = f"{self.dataset_name.lower().replace(' ', '-')}-{kind}"
        return load_or_build(build, key=key, stem=stem, source=source, directories=directories)

    def _load(self) -> tuple[Dataset, np.ndarray, Dataset]:
        kind, root = self._locate()
        start = time.perf_counter()
        result = self._load_arrays(kind, root)
        self.cache_file, self.cache_hit = result.path, result.hit
        arrays = result.arrays
        train_x, test_x = (torch.from_numpy(arrays[f"{split}_images"]) for split in ("train", "test"))
        train_y, test_y = arrays["train_labels"], arrays["test_labels"]
        self.source = kind if kind == "torchvision" else str(root)
        log.info(
            "%s loaded from %s: %d train / %d test images in %.1f s (%s)",
            self.dataset_name,
            self.source,
            len(train_y),
            len(test_y),
            time.perf_counter() - start,
            f"read from the cache {result.path}"
            if result.hit
            else (f"decoded, cached in {result.path}" if result.path else "decoded, not cached"),
        )
        transform = RandomCropFlip(32, padding=4) if self.augment else None
        train = InMemoryImageDataset(train_x, train_y, transform=transform)
        test = InMemoryImageDataset(test_x, test_y)
        return train, train_y, test
