"""Tests of the node datamodules: DigitsDataModule and CIFAR10DataModule (real archive + tiny synthetic trees)."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lightning_mosaic.data import CIFAR10DataModule, DigitsDataModule, NodeDataModule
from lightning_mosaic.data import images as images_module
from lightning_mosaic.data.cifar10 import CIFAR10_CLASSES, InMemoryImageDataset, RandomCropFlip

# ---- digits


def test_digits_end_to_end():
    dm = DigitsDataModule(num_nodes=4, alpha=0.5, batch_size=8, seed=1)
    assert dm.num_classes == 10  # before setup
    dm.setup("fit")
    n_train, n_test = len(dm.train_dataset), len(dm.test_dataset)
    assert n_train + n_test == 1797
    assert n_test == 360  # ceil(0.2 * 1797), stratified
    test_counts = np.bincount([int(y) for _, y in dm.test_dataset], minlength=10)
    all_counts = test_counts + np.bincount(dm.train_labels, minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * all_counts) <= 1)  # stratified split
    assert sorted(np.concatenate(dm.partition).tolist()) == list(range(n_train))

    hist = dm.node_label_histogram()
    assert hist.shape == (4, 10) and hist.dtype == np.int64
    assert hist.sum() == n_train
    assert np.array_equal(hist.sum(axis=0), np.bincount(dm.train_labels, minlength=10))
    assert [int(r) for r in hist.sum(axis=1)] == [len(p) for p in dm.partition]

    loader = dm.train_dataloader()
    assert len(loader) == math.ceil(n_train / (4 * 8))
    x, y = next(iter(loader))
    assert x.shape == (4, 8, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (4, 8) and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    for node in range(4):  # labels match the node's shard
        node_classes = set(np.flatnonzero(hist[node]).tolist())
        assert set(y[node].tolist()) <= node_classes

    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (256, 1, 8, 8) and yv.shape == (256,) and yv.dtype == torch.int64
    total = sum(len(b[1]) for b in dm.test_dataloader())
    assert total == n_test


def test_digits_is_reproducible_and_iid_is_balanced():
    a, b = DigitsDataModule(5, 0.1, seed=7), DigitsDataModule(5, 0.1, seed=7)
    a.setup()
    b.setup()
    assert all(np.array_equal(p, q) for p, q in zip(a.partition, b.partition, strict=True))
    iid = DigitsDataModule(5, "iid", seed=7)
    iid.setup()
    sizes = [len(p) for p in iid.partition]
    assert max(sizes) - min(sizes) <= 1
    assert (iid.node_label_histogram() > 0).sum(axis=1).mean() > (a.node_label_histogram() > 0).sum(axis=1).mean()


def test_digits_test_subset_and_steps_per_epoch():
    dm = DigitsDataModule(3, 1.0, batch_size=4, test_subset=50, steps_per_epoch=5)
    dm.setup()
    assert len(dm.test_dataset) == 50
    assert len(dm.train_dataloader()) == 5
    too_big = DigitsDataModule(3, 1.0, test_subset=10_000)
    with pytest.raises(ValueError, match="test_subset=10000"):
        too_big.setup()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_nodes": 1}, "num_nodes"),
        ({"batch_size": 0}, "batch_size"),
        ({"alpha": 0}, "alpha"),
        ({"alpha": "nope"}, "alpha"),
        ({"seed": -1}, "seed"),
        ({"min_samples": 0}, "min_samples"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"test_subset": 0}, "test_subset"),
        ({"num_workers": -1}, "num_workers"),
        ({"steps_per_epoch": 0}, "steps_per_epoch"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"test_fraction": 0.001}, "test_fraction"),
    ],
)
def test_digits_validates_arguments_in_init(kwargs, match):
    args = {"num_nodes": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**args)


def test_subclasses_forward_base_arguments_positionally_and_by_keyword():
    digits = DigitsDataModule(5, 0.3, 8, test_fraction=0.25, seed=2, eval_batch_size=64)
    assert (digits.num_nodes, digits.alpha, digits.batch_size, digits.seed) == (5, 0.3, 8, 2)
    assert (digits.test_fraction, digits.eval_batch_size) == (0.25, 64)
    cifar = CIFAR10DataModule("nowhere", 4, "iid", 16, augment=True, steps_per_epoch=3)
    assert (cifar.num_nodes, cifar.alpha, cifar.batch_size, cifar.steps_per_epoch, cifar.augment) == (
        4,
        "iid",
        16,
        3,
        True,
    )
    with pytest.raises(TypeError, match="bogus"):
        DigitsDataModule(4, bogus=1)


def test_properties_before_setup_raise():
    dm = DigitsDataModule(2)
    with pytest.raises(RuntimeError, match="setup"):
        dm.node_label_histogram()
    with pytest.raises(RuntimeError, match="setup"):
        _ = dm.partition


class _Probe(pl.LightningModule):
    """Tiny model that records the label batches it trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(64, 10)
        self.seen: list[tuple[int, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        assert x.shape[:2] == y.shape and x.shape[2:] == (1, 8, 8)
        self.seen.append((self.current_epoch, y.clone()))
        return nn.functional.cross_entropy(self.layer(x.flatten(2)).flatten(0, 1), y.flatten())

    def validation_step(self, batch, batch_idx):
        x, y = batch
        assert x.shape[1:] == (1, 8, 8) and x.shape[0] == y.shape[0]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fit_advances_the_sampler_epoch():
    dm = DigitsDataModule(num_nodes=3, alpha=0.5, batch_size=4, steps_per_epoch=3, test_subset=64)
    model = _Probe()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert [epoch for epoch, _ in model.seen] == [0, 0, 0, 1, 1, 1]
    reference = dm.train_dataloader()
    expected = []
    for epoch in (0, 1):
        reference.batch_sampler.set_epoch(epoch)
        expected.extend(y for _, y in reference)
    assert all(torch.equal(got, want) for (_, got), want in zip(model.seen, expected, strict=True))


# ---- CIFAR-10 real


@pytest.fixture(scope="module")
def cifar10_real(cifar10_dir: Path) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(cifar10_dir, num_nodes=16, alpha=0.1, batch_size=8, seed=0)
    dm.setup("fit")
    return dm


def test_cifar10_real_archive_sizes_and_classes(cifar10_real: CIFAR10DataModule, cifar10_dir: Path):
    dm = cifar10_real
    assert dm.source == str(cifar10_dir / "cifar10")
    assert dm.num_classes == 10
    assert len(dm.train_dataset) == 50_000
    assert len(dm.test_dataset) == 10_000
    assert np.array_equal(np.bincount(dm.train_labels, minlength=10), np.full(10, 5000))
    assert np.array_equal(np.bincount(dm.test_dataset.labels.numpy(), minlength=10), np.full(10, 1000))
    assert dm.train_dataset.images.shape == (50_000, 3, 32, 32)
    assert dm.train_dataset.images.dtype == torch.uint8


def test_cifar10_real_partition_covers_everything(cifar10_real: CIFAR10DataModule):
    dm = cifar10_real
    everything = np.concatenate(dm.partition)
    assert len(everything) == 50_000
    assert np.array_equal(np.sort(everything), np.arange(50_000))
    hist = dm.node_label_histogram()
    assert hist.shape == (16, 10)
    assert np.array_equal(hist.sum(axis=0), np.full(10, 5000))
    assert (hist > 0).sum(axis=1).mean() < 8  # alpha = 0.1 is strongly label-skewed


def test_cifar10_real_batches_and_normalization(cifar10_real: CIFAR10DataModule):
    dm = cifar10_real
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 8, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (16, 8) and y.dtype == torch.int64
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (256, 3, 32, 32) and yv.shape == (256,)
    assert -1.0 <= float(xv.min()) < -0.9 and 0.9 < float(xv.max()) <= 1.0
    raw = dm.test_dataset.images[:256].float()
    torch.testing.assert_close(xv, (raw / 255 - 0.5) / 0.5)
    assert float(xv.mean()) == pytest.approx(0.0, abs=0.2)


def test_cifar10_real_labels_follow_folders(cifar10_real: CIFAR10DataModule, cifar10_dir: Path):
    dm = cifar10_real
    first_cat = sorted((cifar10_dir / "cifar10" / "train" / "cat").iterdir())[0]
    index = 3 * 5000  # classes are stored in canonical order, files sorted by name
    assert int(dm.train_labels[index]) == CIFAR10_CLASSES.index("cat") == 3
    image = torch.from_numpy(np.array(Image.open(first_cat).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(dm.train_dataset.images[index], image)


# ---- CIFAR-10 tiny trees


@pytest.fixture(params=["torchvision", "pillow"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with torchvision.io decoding and with the Pillow fallback."""
    if request.param == "pillow":
        monkeypatch.setattr(images_module, "_torchvision_decoders", lambda: None)
    return request.param


def _write_image(path: Path, size: tuple[int, int] = (32, 32), fmt: str = "JPEG", seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def _write_tree(root: Path, classes=("cat", "dog", "ship"), per_class: int = 4) -> None:
    for split in ("train", "test"):
        for k, name in enumerate(classes):
            for i in range(per_class):
                _write_image(root / split / name / f"{i:04d}.jpg", seed=100 * k + i)


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_tiny_image_folder(tmp_path: Path, nested: bool, decoder: str):
    root = tmp_path / "cifar10" if nested else tmp_path
    _write_tree(root)
    _write_image(root / "train" / "ship" / "extra.png", fmt="PNG", seed=99)  # PNG files are read too
    (root / "train" / "cat" / "notes.txt").write_text("ignored")
    dm = CIFAR10DataModule(tmp_path, num_nodes=2, alpha="iid", batch_size=3, eval_batch_size=5)
    dm.setup()
    assert dm.source == str(root)
    assert len(dm.train_dataset) == 13 and len(dm.test_dataset) == 12
    assert sorted(set(dm.train_labels.tolist())) == [3, 5, 8]  # canonical labels of cat, dog, ship
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 3, 32, 32) and y.shape == (2, 3)
    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (5, 3, 32, 32) and yv.shape == (5,)


def test_cifar10_augment_only_touches_training(tmp_path: Path):
    _write_tree(tmp_path)
    dm = CIFAR10DataModule(tmp_path, num_nodes=2, alpha="iid", batch_size=2, augment=True)
    dm.setup()
    assert isinstance(dm.train_dataset.transform, RandomCropFlip)
    assert dm.test_dataset.transform is None
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 2, 3, 32, 32)
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_cifar10_wrong_image_size_names_the_file(tmp_path: Path, decoder: str):
    _write_tree(tmp_path)
    bad = tmp_path / "train" / "dog" / "0002.jpg"
    _write_image(bad, size=(16, 16))
    with pytest.raises(ValueError, match=r"0002\.jpg.*3x32x32"):
        CIFAR10DataModule(tmp_path, num_nodes=2).setup()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_cifar10_corrupt_image_names_the_file(tmp_path: Path, damage: str, decoder: str):
    _write_tree(tmp_path)
    bad = tmp_path / "test" / "cat" / "0001.jpg"
    data = bad.read_bytes()
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not an image" * 10, "empty": b""}[damage])
    with pytest.raises(ValueError, match=r"cat.0001\.jpg"):
        CIFAR10DataModule(tmp_path, num_nodes=2).setup()


def test_cifar10_unknown_class_folder_is_named(tmp_path: Path):
    _write_tree(tmp_path)
    _write_image(tmp_path / "train" / "zebra" / "0000.jpg")
    with pytest.raises(ValueError, match="zebra"):
        CIFAR10DataModule(tmp_path, num_nodes=2).setup()


@pytest.mark.parametrize("content", ["nothing", "no image"])
def test_cifar10_class_folder_without_images_is_named_before_decoding(
    tmp_path: Path, content: str, monkeypatch: pytest.MonkeyPatch
):
    _write_tree(tmp_path)
    empty = tmp_path / "train" / "frog"
    empty.mkdir()
    if content == "no image":
        (empty / "notes.txt").write_text("not an image")
        (empty / ".hidden.jpg").write_bytes(b"")

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded images before checking the class folders")

    monkeypatch.setattr("lightning_mosaic.data.cifar.decode_image_files", must_not_decode)
    with pytest.raises(ValueError, match=rf"class folder {re.escape(str(empty))} holds no image files"):
        CIFAR10DataModule(tmp_path, num_nodes=2, cache_dir=None).setup()


def test_cifar10_missing_data_lists_paths_and_mentions_download(tmp_path: Path):
    dm = CIFAR10DataModule(tmp_path, num_nodes=2)
    with pytest.raises(FileNotFoundError) as info:
        dm.setup()
    message = str(info.value)
    for looked_for in ("cifar-10-batches-py", str(tmp_path / "train"), str(tmp_path / "cifar10" / "test")):
        assert looked_for in message
    assert "download=False" in message
    with pytest.raises(FileNotFoundError, match="download"):
        dm.prepare_data()


def test_cifar10_only_train_folder_is_not_enough(tmp_path: Path):
    _write_image(tmp_path / "train" / "cat" / "0000.jpg")
    with pytest.raises(FileNotFoundError, match="test"):
        CIFAR10DataModule(tmp_path, num_nodes=2).setup()


def test_cifar10_download_failure_reports_the_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torchvision.datasets

    class _Offline:
        def __init__(self, *args, **kwargs):
            raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", _Offline)
    dm = CIFAR10DataModule(tmp_path / "new", num_nodes=2, download=True)
    with pytest.raises(FileNotFoundError, match="download failed.*network is unreachable"):
        dm.prepare_data()


def test_cifar10_torchvision_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torchvision.datasets

    (tmp_path / "cifar-10-batches-py").mkdir()
    calls = []

    class _FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            count = 20 if train else 6
            self.data = np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
            self.targets = [i % 10 for i in range(count)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", _FakeCIFAR10)
    dm = CIFAR10DataModule(tmp_path, num_nodes=2, alpha=1.0, batch_size=2)
    dm.setup()
    assert dm.source == "torchvision"
    assert calls == [(str(tmp_path), True, False), (str(tmp_path), False, False)]
    assert len(dm.train_dataset) == 20 and len(dm.test_dataset) == 6
    fake = _FakeCIFAR10(tmp_path, train=False)
    assert torch.equal(dm.test_dataset.images, torch.from_numpy(fake.data).permute(0, 3, 1, 2))


def test_cifar10_validates_arguments_before_touching_disk(tmp_path: Path):
    with pytest.raises(ValueError, match="num_nodes"):
        CIFAR10DataModule(tmp_path / "does-not-exist", num_nodes=1)
    with pytest.raises(ValueError, match="data_dir"):
        CIFAR10DataModule(None, num_nodes=2)  # type: ignore[arg-type]


def test_random_crop_flip_is_a_shifted_or_flipped_window():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)  # no zeros, so padding is visible
    out = RandomCropFlip(32, padding=4)(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    offsets, flips = set(), 0
    for i in range(64):
        matches = [
            (top, left, flip)
            for top in range(9)
            for left in range(9)
            for flip in (False, True)
            if torch.equal(
                out[i],
                padded[i, :, top : top + 32, left : left + 32].flip(-1)
                if flip
                else padded[i, :, top : top + 32, left : left + 32],
            )
        ]
        assert matches, f"image {i} is not a crop of the padded input"
        offsets.add(matches[0][:2])
        flips += matches[0][2]
    assert len(offsets) > 20 and 10 < flips < 54
    single = RandomCropFlip(32, padding=4)(images[0])
    assert single.shape == (3, 32, 32)


def test_in_memory_dataset_single_and_batched_fetch_agree():
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    dataset = InMemoryImageDataset(images, np.arange(10) % 3)
    batch = dataset.__getitems__([4, 1, 7])
    for (x, y), index in zip(batch, [4, 1, 7], strict=True):
        single_x, single_y = dataset[index]
        assert torch.equal(x, single_x) and y == single_y == index % 3
    with pytest.raises(ValueError, match="labels"):
        InMemoryImageDataset(images, np.arange(9))
    with pytest.raises(ValueError, match="uint8"):
        InMemoryImageDataset(images.float(), np.arange(10))


def test_base_class_requires_num_classes():
    class _NoClasses(NodeDataModule):
        pass

    with pytest.raises(TypeError, match="num_classes"):
        _NoClasses(2)


def test_png_bytes_with_jpg_name_still_decode(tmp_path: Path, decoder: str):
    _write_tree(tmp_path, per_class=2)
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
    (tmp_path / "train" / "cat" / "0000.jpg").write_bytes(buffer.getvalue())
    dm = CIFAR10DataModule(tmp_path, num_nodes=2, alpha="iid")
    dm.setup()
    assert int(dm.train_dataset.images[0].sum()) == 0


def test_both_decoders_give_identical_pixels(cifar10_dir: Path, monkeypatch: pytest.MonkeyPatch):
    files = sorted((cifar10_dir / "cifar10" / "test").glob("*/*.jpg"))[::100]
    fast = images_module._decode_files(files, (3, 32, 32))
    monkeypatch.setattr(images_module, "_torchvision_decoders", lambda: None)
    assert torch.equal(images_module._decode_files(files, (3, 32, 32)), fast)
