"""CIFAR100DataModule: an ImageFolder tree of real CIFAR JPEGs in 100 fine-class folders, errors, torchvision layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from lightning_mosaic import MosaicGossip, MosaicModule
from lightning_mosaic.data import CIFAR100DataModule
from lightning_mosaic.data.cifar100 import CIFAR100_CLASSES
from lightning_mosaic.models import GNLeNet

TRAIN_PER_CLASS, TEST_PER_CLASS = 2, 1


@pytest.fixture(scope="module")
def cifar100_tree(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/cifar100/{train,test}/<fine class>/*.jpg``: 300 real CIFAR-10 JPEGs relabelled into the 100 classes."""
    sources = sorted((cifar10_dir / "cifar10" / "train").glob("*/*.jpg"))[::150][: 100 * (TRAIN_PER_CLASS + 1)]
    root = tmp_path_factory.mktemp("cifar100-tree")
    files = iter(sources)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for name in CIFAR100_CLASSES:
            for i in range(per_class):
                target = root / "cifar100" / split / name / f"{i:05d}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(next(files), target)
    return root


def test_image_folder_tree_of_real_jpegs(cifar100_tree: Path):
    dm = CIFAR100DataModule(cifar100_tree, num_nodes=4, alpha=0.5, batch_size=3, eval_batch_size=50, seed=0)
    assert dm.num_classes == 100
    dm.setup()
    assert dm.source == str(cifar100_tree / "cifar100")
    assert len(dm.train_dataset) == 200 and len(dm.test_dataset) == 100
    assert np.array_equal(dm.train_labels, np.repeat(np.arange(100), TRAIN_PER_CLASS))  # canonical fine-label order
    index = CIFAR100_CLASSES.index("maple_tree") * TRAIN_PER_CLASS + 1
    source = cifar100_tree / "cifar100" / "train" / "maple_tree" / "00001.jpg"
    expected = torch.from_numpy(np.array(Image.open(source).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(dm.train_dataset.images[index], expected)
    hist = dm.node_label_histogram()
    assert hist.shape == (4, 100) and np.array_equal(hist.sum(axis=0), np.full(100, TRAIN_PER_CLASS))
    assert np.array_equal(np.sort(np.concatenate(dm.partition)), np.arange(200))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 3, 32, 32) and y.shape == (4, 3) and -1 <= float(x.min()) and float(x.max()) <= 1
    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (50, 3, 32, 32) and yv.tolist() == list(range(50))


def test_gnlenet_with_100_outputs_trains_on_it(cifar100_tree: Path, one_torch_thread: None):
    dm = CIFAR100DataModule(cifar100_tree, num_nodes=4, alpha=0.5, batch_size=4, seed=0)
    module = MosaicModule(lambda: GNLeNet(num_classes=100), num_nodes=4, seed=0)
    start = module.gossip_parameters.detach().clone()
    trainer = Trainer(
        max_steps=3,
        callbacks=[MosaicGossip(fragments=4, peers=2)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, dm)
    assert trainer.global_step == 3 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert not torch.equal(module.gossip_parameters, start)


def _copy_tree(source: Path, destination: Path) -> Path:
    shutil.copytree(source / "cifar100", destination)
    return destination


def test_unknown_class_folder_is_named(cifar100_tree: Path, tmp_path: Path):
    root = _copy_tree(cifar100_tree, tmp_path / "tree")
    (root / "train" / "apple").rename(root / "train" / "airplane")  # a CIFAR-10 class, not a CIFAR-100 one
    with pytest.raises(ValueError, match=r"unknown class folder .*train.airplane: 'airplane' is not a CIFAR-100 class"):
        CIFAR100DataModule(root, num_nodes=2).setup()


def test_wrong_image_size_is_named(cifar100_tree: Path, tmp_path: Path):
    root = _copy_tree(cifar100_tree, tmp_path / "tree")
    bad = root / "test" / "whale" / "00000.jpg"
    Image.open(bad).convert("RGB").resize((24, 24)).save(bad, format="JPEG")
    with pytest.raises(ValueError, match=r"whale.00000\.jpg decodes to shape \(3, 24, 24\).*3x32x32"):
        CIFAR100DataModule(root, num_nodes=2).setup()


def test_truncated_image_is_named(cifar100_tree: Path, tmp_path: Path):
    root = _copy_tree(cifar100_tree, tmp_path / "tree")
    bad = root / "train" / "otter" / "00001.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cannot read image file .*otter.00001\.jpg"):
        CIFAR100DataModule(root, num_nodes=2).setup()


def test_torchvision_layout_uses_fine_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torchvision.datasets

    (tmp_path / "cifar-100-python").mkdir()
    calls = []

    class _FakeCIFAR100:  # torchvision.datasets.CIFAR100 exposes .data (N, 32, 32, 3) and the fine labels as .targets
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            count = 300 if train else 100
            self.data = np.random.default_rng(int(train)).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
            self.targets = [i % 100 for i in range(count)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", _FakeCIFAR100)
    dm = CIFAR100DataModule(tmp_path, num_nodes=3, alpha=0.1, batch_size=2)
    dm.setup()
    assert dm.source == "torchvision"
    assert calls == [(str(tmp_path), True, False), (str(tmp_path), False, False)]
    assert np.array_equal(np.bincount(dm.train_labels, minlength=100), np.full(100, 3))


def test_missing_data_lists_every_path(tmp_path: Path):
    with pytest.raises(FileNotFoundError) as info:
        CIFAR100DataModule(tmp_path, num_nodes=2).prepare_data()
    message = str(info.value)
    assert message.startswith(f"CIFAR-100 not found under {tmp_path}")
    for path in ("cifar-100-python", str(tmp_path / "train"), str(tmp_path / "cifar100" / "test")):
        assert path in message
