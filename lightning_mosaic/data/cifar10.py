"""CIFAR-10 from torchvision's canonical files or from an ImageFolder tree of JPEG/PNG files."""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_mosaic.data.base import NodeDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR10_CLASSES",
    "InMemoryImageDataset",
    "RandomCropFlip",
    "load_image_folder_split",
]

log = logging.getLogger(__name__)

#: The CIFAR-10 classes in their canonical label order (label ``k`` is ``CIFAR10_CLASSES[k]``).
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
#: File name endings read from an ImageFolder tree (case-insensitive); other files are ignored.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")
_TORCHVISION_FOLDER = "cifar-10-batches-py"
#: Per-channel mean and std of the GN-LeNet reference (decentralizepy): maps [0, 1] to [-1, 1].
NORMALIZE_MEAN = 0.5
NORMALIZE_STD = 0.5


class InMemoryImageDataset(Dataset):
    """Uint8 images held in memory, normalized (and optionally augmented) on the fly.

    Items are ``(x, y)`` with ``x`` float32 of shape ``(C, H, W)`` equal to ``(pixel / 255 - 0.5) / 0.5``,
    i.e. in ``[-1, 1]``, and ``y`` a Python ``int``. ``transform``, if given, runs on the uint8 image before
    normalization (e.g. ``RandomCrop`` + ``RandomHorizontalFlip``; it draws from torch's global RNG, so seed
    it with ``lightning.seed_everything`` for reproducible augmentation).

    Args:
        images: uint8 tensor of shape ``(N, C, H, W)``.
        labels: Integer labels, shape ``(N,)``.
        transform: Optional callable on one uint8 ``(C, H, W)`` tensor returning one of the same shape.

    Raises:
        ValueError: ``images`` is not a 4-D uint8 tensor or ``labels`` does not have shape ``(N,)``.
    """

    def __init__(self, images: Tensor, labels: Tensor | np.ndarray, transform=None) -> None:
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be a uint8 tensor of shape (N, C, H, W); got {type(images).__name__} "
                f"{getattr(images, 'dtype', None)} {tuple(getattr(images, 'shape', ()))}"
            )
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},); got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    @staticmethod
    def _normalize(x: Tensor) -> Tensor:
        return x.to(torch.float32).div_(255.0).sub_(NORMALIZE_MEAN).div_(NORMALIZE_STD)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = self.images[index]
        if self.transform is not None:
            x = self.transform(x)
        return self._normalize(x), int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        """Batched fetch used by ``DataLoader``: one gather and one normalization for the whole batch.

        A transform with a ``batched = True`` attribute (like :class:`RandomCropFlip`) is applied to the whole
        ``(B, C, H, W)`` batch at once; any other transform is applied image by image.
        """
        index = torch.as_tensor(indices, dtype=torch.int64)
        x = self.images.index_select(0, index)
        if self.transform is not None:
            if getattr(self.transform, "batched", False):
                x = self.transform(x)
            else:
                x = torch.stack([self.transform(img) for img in x])
        return list(zip(self._normalize(x).unbind(0), self.labels[index].tolist(), strict=True))


class RandomCropFlip:
    """Batched ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip(0.5)`` on uint8 images.

    Same distribution as ``torchvision.transforms.v2.Compose([RandomCrop(size, padding=padding),
    RandomHorizontalFlip()])`` with zero fill, with an independent crop offset and flip per image, but the
    random numbers for a whole batch are drawn at once and the batch is padded once: about 13 ms for 480 CIFAR
    images instead of about 100 ms for per-image v2 calls (2 shared CPU cores). Random numbers come from
    torch's global RNG (seed with ``lightning.seed_everything``).

    Args:
        size: Output height and width.
        padding: Zero padding added on every side before cropping, ``>= 0``.

    Raises:
        ValueError: At call time, the input is not ``(C, H, W)`` or ``(B, C, H, W)`` or is smaller than
            ``size`` after padding.
    """

    batched = True

    def __init__(self, size: int = 32, padding: int = 4) -> None:
        self.size = int(size)
        self.padding = int(padding)

    def __call__(self, images: Tensor) -> Tensor:
        """Augment ``images`` of shape ``(C, H, W)`` or ``(B, C, H, W)``; returns ``(..., C, size, size)``."""
        single = images.ndim == 3
        batch = images.unsqueeze(0) if single else images
        if batch.ndim != 4:
            raise ValueError(f"expected images of shape (C, H, W) or (B, C, H, W); got {tuple(images.shape)}")
        p, size = self.padding, self.size
        padded = torch.nn.functional.pad(batch, (p, p, p, p)) if p else batch
        n, channels, height, width = padded.shape
        if height < size or width < size:
            raise ValueError(f"images of shape {tuple(images.shape)} are smaller than the crop size {size}")
        tops = torch.randint(0, height - size + 1, (n,)).tolist()
        lefts = torch.randint(0, width - size + 1, (n,)).tolist()
        flips = (torch.rand(n) < 0.5).tolist()
        out = torch.empty((n, channels, size, size), dtype=batch.dtype)
        for i, (top, left, flip) in enumerate(zip(tops, lefts, flips, strict=True)):
            window = padded[i, :, top : top + size, left : left + size]
            out[i] = window.flip(-1) if flip else window
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, padding={self.padding})"


def _torchvision_decoders() -> tuple[Any, Any, Any] | None:
    """``(decode_jpeg, decode_image, ImageReadMode)`` from ``torchvision.io``, or ``None`` where unavailable.

    torchvision 0.29 deprecates its image decoders in favour of TorchCodec; when a future release removes them,
    decoding falls back to Pillow (a torchvision dependency), about 3x slower on CIFAR-sized JPEGs.
    """
    try:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    except ImportError:  # pragma: no cover - depends on the installed torchvision
        return None
    return decode_jpeg, decode_image, ImageReadMode


@contextlib.contextmanager
def _quiet_torchvision_deprecation() -> Iterator[None]:
    """Silence torchvision 0.29's per-call deprecation notice of its decoders (we fall back to Pillow)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*decoding and encoding capabilities of TorchVision are deprecated")
        yield


def _decode_one(path: Path, data: bytes) -> Tensor:
    """Decode one image file to uint8 RGB ``(3, H, W)``; raise ``ValueError`` naming ``path`` on failure.

    Tries ``torchvision.io.decode_image`` first (if available), then Pillow, so that a file only counts as
    unreadable when both fail.
    """
    decoders = _torchvision_decoders()
    if decoders is not None:
        _, decode_image, mode = decoders
        try:
            with _quiet_torchvision_deprecation():
                return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode.RGB)
        except Exception:
            pass  # let Pillow try (and report) below
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            array = np.array(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3); loads the whole file
    except Exception as exc:
        raise ValueError(f"cannot read image file {path}: {type(exc).__name__}: {exc}") from exc
    return torch.from_numpy(array).permute(2, 0, 1)


def _decode_files(files: list[Path], image_shape: tuple[int, int, int], chunk: int = 1024) -> Tensor:
    """Decode ``files`` into one uint8 tensor ``(N, *image_shape)``.

    JPEG files go through ``torchvision.io.decode_jpeg`` in batches of ``chunk`` (about twice as fast as one
    call per file); when a batch fails, its files are decoded one by one so that the error names the culprit.
    """
    decoders = _torchvision_decoders()

    def check(path: Path, image: Tensor) -> Tensor:
        if tuple(image.shape) != image_shape:
            raise ValueError(
                f"image file {path} decodes to shape {tuple(image.shape)} (C, H, W); expected "
                f"{'x'.join(map(str, image_shape))}"
            )
        return image

    out = torch.empty((len(files), *image_shape), dtype=torch.uint8)
    for start in range(0, len(files), chunk):
        paths = files[start : start + chunk]
        blobs = []
        for path in paths:
            try:
                blobs.append(path.read_bytes())
            except OSError as exc:
                raise ValueError(f"cannot read image file {path}: {type(exc).__name__}: {exc}") from exc
        images: list[Tensor] | None = None
        all_jpeg = all(p.suffix.lower() in (".jpg", ".jpeg") for p in paths) and all(len(b) > 0 for b in blobs)
        if decoders is not None and all_jpeg:
            decode_jpeg, _, mode = decoders
            tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
            try:
                with _quiet_torchvision_deprecation():
                    images = decode_jpeg(tensors, mode=mode.RGB)
            except Exception:
                images = None  # decode one by one below so that the error names the bad file
        if images is None:
            images = [_decode_one(p, b) for p, b in zip(paths, blobs, strict=True)]
        for i, (path, image) in enumerate(zip(paths, images, strict=True)):
            out[start + i] = check(path, image)
    return out


def load_image_folder_split(
    split_dir: str | Path,
    classes: tuple[str, ...] = CIFAR10_CLASSES,
    image_shape: tuple[int, int, int] = (3, 32, 32),
) -> tuple[Tensor, np.ndarray]:
    """Decode every image of an ImageFolder split (``split_dir/<class>/<file>``) into one uint8 tensor.

    Class folders map to labels by their position in ``classes`` (not by directory order), so a tree holding
    only some classes keeps the canonical labels. Files are read in sorted order; hidden entries and files
    whose names do not end in one of ``IMAGE_EXTENSIONS`` are skipped. Images are decoded once with
    ``torchvision.io`` (``decode_jpeg`` in batches, ``decode_image`` for other formats), falling back to
    Pillow (identical pixels on the CIFAR-10 JPEGs); grayscale, palette and RGBA inputs are converted to RGB.

    Args:
        split_dir: Directory holding one sub-folder per class.
        classes: Allowed class folder names in label order.
        image_shape: Required decoded shape ``(C, H, W)`` of every image.

    Returns:
        ``(images, labels)``: uint8 tensor of shape ``(N, C, H, W)`` and int64 array of shape ``(N,)``.

    Raises:
        ValueError: A class folder is not in ``classes`` (message names the folder); an image cannot be read
            or decoded, or decodes to a shape other than ``image_shape`` (message names the file); the split
            holds no image files.
    """
    split_dir = Path(split_dir)
    label_of = {name: k for k, name in enumerate(classes)}
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    for class_dir in class_dirs:
        if class_dir.name not in label_of:
            raise ValueError(
                f"unknown class folder {class_dir}: {class_dir.name!r} is not a CIFAR-10 class; allowed "
                f"folder names are {', '.join(classes)}"
            )
    files: list[Path] = []
    labels: list[int] = []
    for class_dir in sorted(class_dirs, key=lambda p: label_of[p.name]):
        names = sorted(
            p
            for p in class_dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        files.extend(names)
        labels.extend([label_of[class_dir.name]] * len(names))
    if not files:
        raise ValueError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in the class folders of {split_dir}; "
            f"expected {split_dir}/<class>/<image> with <class> one of {', '.join(classes)}"
        )
    return _decode_files(files, image_shape), np.asarray(labels, dtype=np.int64)


class CIFAR10DataModule(NodeDataModule):
    """Node-partitioned CIFAR-10 (50,000 train / 10,000 test 32x32 RGB images, 10 classes).

    Looks under ``data_dir``, in this order, for

    1. torchvision's canonical python batches, ``data_dir/cifar-10-batches-py`` (read with
       ``torchvision.datasets.CIFAR10(root=data_dir)``, which also verifies their checksums);
    2. an ImageFolder tree ``data_dir/train/<class>/*`` plus ``data_dir/test/<class>/*``;
    3. the same tree one level down, ``data_dir/cifar10/{train,test}/<class>/*`` (what the
       ``cifar10-jpg.tar.gz`` archive extracts to).

    Class folders must be CIFAR-10 class names (``airplane automobile bird cat deer dog frog horse ship
    truck``); labels follow that canonical order. JPEG/PNG/WebP files are decoded once, at :meth:`setup`, into
    a uint8 tensor ``(N, 3, 32, 32)`` kept in memory (about 184 MB for the full set). Reading and decoding the
    60,000 JPEGs of the archive takes 5-7 s on 2 shared CPU cores with ``torchvision.io`` 0.29 (about 15 s
    with the Pillow fallback), so there is no on-disk cache.

    Inputs are normalized on the fly with mean = std = 0.5 per channel (the GN-LeNet reference,
    decentralizepy), so values lie in ``[-1, 1]``. ``augment=True`` adds a random crop (32, zero padding 4)
    and a random horizontal flip to training samples only, with :class:`RandomCropFlip` (the distribution of
    ``torchvision.transforms.v2`` ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``, batched); the
    test set is never augmented.

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

    num_classes = 10
    input_shape = (3, 32, 32)
    classes = CIFAR10_CLASSES

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
        self.data_dir = Path(data_dir).expanduser()
        self.download = bool(download)
        self.augment = bool(augment)
        #: Which layout :meth:`setup` read: ``"torchvision"`` or the ImageFolder root, set by :meth:`setup`.
        self.source: str | None = None

    # ------------------------------------------------------------------ locating the data
    def _candidates(self) -> list[tuple[str, list[Path]]]:
        root = self.data_dir
        return [
            ("torchvision", [root / _TORCHVISION_FOLDER]),
            ("imagefolder", [root / "train", root / "test"]),
            ("imagefolder", [root / "cifar10" / "train", root / "cifar10" / "test"]),
        ]

    def _find(self) -> tuple[str, Path] | None:
        for kind, paths in self._candidates():
            if all(p.is_dir() for p in paths):
                return kind, paths[0].parent if kind == "imagefolder" else self.data_dir
        return None

    def _looked_for(self) -> str:
        lines = []
        for kind, paths in self._candidates():
            what = "torchvision CIFAR-10 batches" if kind == "torchvision" else "ImageFolder train/test trees"
            lines.append(f"  - {' and '.join(str(p) for p in paths)}  ({what})")
        return "\n".join(lines)

    def _download(self) -> None:
        from torchvision.datasets import CIFAR10

        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            CIFAR10(root=str(self.data_dir), train=True, download=True)
            CIFAR10(root=str(self.data_dir), train=False, download=True)
        except Exception as exc:
            raise FileNotFoundError(
                f"CIFAR-10 not found under {self.data_dir} and the torchvision download failed "
                f"({type(exc).__name__}: {exc}). Looked for:\n{self._looked_for()}\n"
                "Download it elsewhere and point data_dir at it, or extract an ImageFolder archive there."
            ) from exc

    def _locate(self) -> tuple[str, Path]:
        found = self._find()
        if found is not None:
            return found
        if not self.download:
            raise FileNotFoundError(
                f"CIFAR-10 not found under {self.data_dir}. Looked for:\n{self._looked_for()}\n"
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
                f"the torchvision download reported success but CIFAR-10 is still missing. Looked for:\n"
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
            from torchvision.datasets import CIFAR10

            splits = []
            for train in (True, False):
                ds = CIFAR10(root=str(root), train=train, download=False)
                images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
                splits.append((images, np.asarray(ds.targets, dtype=np.int64)))
            (train_x, train_y), (test_x, test_y) = splits
        else:
            train_x, train_y = load_image_folder_split(root / "train", self.classes, self.input_shape)
            test_x, test_y = load_image_folder_split(root / "test", self.classes, self.input_shape)
        self.source = kind if kind == "torchvision" else str(root)
        log.info(
            "CIFAR-10 loaded from %s: %d train / %d test images in %.1f s",
            self.source,
            len(train_y),
            len(test_y),
            time.perf_counter() - start,
        )
        transform = RandomCropFlip(32, padding=4) if self.augment else None
        train = InMemoryImageDataset(train_x, train_y, transform=transform)
        test = InMemoryImageDataset(test_x, test_y)
        return train, train_y, test
