"""CIFAR-10 from torchvision's canonical files or from an ImageFolder tree of JPEG/PNG files."""

from __future__ import annotations

from lightning_mosaic.data.cifar import CIFARDataModule
from lightning_mosaic.data.images import InMemoryImageDataset, RandomCropFlip, load_image_folder_split

__all__ = [
    "CIFAR10DataModule",
    "CIFAR10_CLASSES",
    "InMemoryImageDataset",
    "RandomCropFlip",
    "load_image_folder_split",
]

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


class CIFAR10DataModule(CIFARDataModule):
    """Node-partitioned CIFAR-10 (50,000 train / 10,000 test 32x32 RGB images, 10 classes).

    Looks under ``data_dir``, in this order, for torchvision's ``cifar-10-batches-py``, an ImageFolder tree
    ``train/<class>/*`` + ``test/<class>/*``, or the same tree under ``cifar10/`` (what the ``cifar10-jpg.tar.gz``
    archive extracts to); see :class:`~lightning_mosaic.data.cifar.CIFARDataModule` for the arguments, batches and
    errors. Class folders must be CIFAR-10 class names (``airplane automobile bird cat deer dog frog horse ship
    truck``). Reading and decoding the 60,000 JPEGs of the archive takes 5-14 s on 2 shared CPU cores with
    ``torchvision.io`` 0.29 (about 15 s with the Pillow fallback); the decoded arrays are therefore cached
    (``cache_dir``, by default in ``data_dir/.lightning_mosaic_cache/``), and later starts read them back in under
    a second.
    """

    num_classes = 10
    classes = CIFAR10_CLASSES
    dataset_name = "CIFAR-10"
    torchvision_folder = "cifar-10-batches-py"
    torchvision_dataset = "CIFAR10"
    archive_folder = "cifar10"
