"""CIFAR-100 (fine labels) from torchvision's canonical files or from an ImageFolder tree of JPEG/PNG files."""

from __future__ import annotations

from lightning_mosaic.data.cifar import CIFARDataModule

__all__ = ["CIFAR100DataModule", "CIFAR100_CLASSES"]

#: The 100 fine classes in their canonical label order (``fine_label_names`` of ``cifar-100-python/meta``,
#: alphabetical): label ``k`` is ``CIFAR100_CLASSES[k]``.
CIFAR100_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip


class CIFAR100DataModule(CIFARDataModule):
    """Node-partitioned CIFAR-100 (50,000 train / 10,000 test 32x32 RGB images, 100 fine classes).

    Looks under ``data_dir``, in this order, for torchvision's ``cifar-100-python`` (fine labels, read with
    ``torchvision.datasets.CIFAR100``), an ImageFolder tree ``train/<class>/*`` + ``test/<class>/*``, or the same
    tree under ``cifar100/``; see :class:`~lightning_mosaic.data.cifar.CIFARDataModule` for the arguments, batches
    and errors. Class folders must be fine class names (:data:`CIFAR100_CLASSES`, e.g. ``apple``, ``maple_tree``);
    the Dirichlet split (``alpha``) is over the 100 fine labels. The decoded arrays are cached like CIFAR-10's
    (``cache_dir``).
    """

    num_classes = 100
    classes = CIFAR100_CLASSES
    dataset_name = "CIFAR-100"
    torchvision_folder = "cifar-100-python"
    torchvision_dataset = "CIFAR100"
    archive_folder = "cifar100"
