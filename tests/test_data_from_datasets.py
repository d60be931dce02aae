"""NodeDataModule.from_datasets / from_datamodule: your own datasets split over the nodes, in their own format.

Real data only: torchvision's ImageFolder on the real CIFAR-10 JPEG tree, scikit-learn's handwritten digits behind a
user's own Dataset and LightningDataModule, and the real MovieLens 100K ratings in a TensorDataset.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from lightning_mosaic.data import NodeDataModule
from lightning_mosaic.data.base import DatasetsDataModule
from lightning_mosaic.data.datasets import encode_labels

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _digits() -> tuple[torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1), digits.target.astype(np.int64)


class DigitDicts(Dataset):
    """A user's own Dataset: sample i is ``{"image": (1, 8, 8) float32, "label": int, "index": i}``, no targets."""

    def __init__(self, start: int = 0, stop: int = 1797) -> None:
        images, labels = _digits()
        self.images, self.targets_hidden = images[start:stop], labels[start:stop]
        self.start = start

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": int(self.targets_hidden[index]), "index": index}


def label_of(sample: dict) -> int:
    return sample["label"]


def _trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


# ---- torchvision ImageFolder on the real CIFAR-10 JPEGs


@pytest.fixture(scope="module")
def cifar_folders(cifar10_dir: Path) -> tuple[Dataset, Dataset, Dataset]:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    transform = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)])
    train = ImageFolder(str(cifar10_dir / "cifar10" / "train"), transform=transform)
    test = ImageFolder(str(cifar10_dir / "cifar10" / "test"), transform=transform)
    rng = np.random.default_rng(0)
    indices = np.sort(rng.choice(len(train), size=400, replace=False)).tolist()
    return train, Subset(train, indices), Subset(test, list(range(0, len(test), 100)))


def test_image_folder_subset_finds_its_labels_and_splits_by_label(cifar_folders):
    folder, train, test = cifar_folders
    dm = NodeDataModule.from_datasets(train, test, num_nodes=4, alpha=0.3, batch_size=5, eval_batch_size=32)
    assert isinstance(dm, NodeDataModule) and isinstance(dm, DatasetsDataModule)
    assert dm.num_classes == 10 and dm.classes == tuple(range(10))  # through Subset.indices into ImageFolder.targets
    dm.setup("fit")
    expected = np.asarray(folder.targets)[train.indices]
    assert np.array_equal(dm.train_labels, expected)
    assert np.array_equal(np.sort(np.concatenate(dm.partition)), np.arange(400))
    hist = dm.node_label_histogram()
    assert hist.shape == (4, 10) and hist.sum() == 400
    assert np.array_equal(hist.sum(axis=0), np.bincount(expected, minlength=10))
    assert (hist > 0).sum(axis=1).mean() < 10  # alpha = 0.3 skews the labels

    loader = dm.train_dataloader()
    indices = next(iter(loader.batch_sampler))
    x, y = next(iter(loader))
    assert x.shape == (4, 5, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (4, 5)
    for node in range(4):
        shard = indices[node * 5 : (node + 1) * 5]
        assert np.isin(shard, dm.partition[node]).all()
        assert y[node].tolist() == expected[shard].tolist()
        assert torch.equal(x[node, 0], train[shard[0]][0])  # node-major: sample (node, 0) is the shard's first
    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (32, 3, 32, 32) and yv.shape == (32,)
    assert sum(len(b[1]) for b in dm.test_dataloader()) == len(test) == 100


# ---- a user's Dataset of dicts (real digits)


def test_dict_samples_keep_their_structure_with_node_batches():
    data = DigitDicts()
    names = np.asarray([DIGIT_NAMES[y] for y in data.targets_hidden])
    dm = NodeDataModule.from_datasets(
        data, DigitDicts(1500), num_nodes=3, alpha=0.5, batch_size=4, labels=names, eval_batch_size=50
    )
    assert dm.classes == tuple(sorted(DIGIT_NAMES)) and dm.num_classes == 10  # string labels, sorted
    dm.setup()
    assert [dm.classes[k] for k in dm.train_labels[:5]] == names[:5].tolist()
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label", "index"}
    assert batch["image"].shape == (3, 4, 1, 8, 8) and batch["label"].shape == batch["index"].shape == (3, 4)
    for node in range(3):
        assert np.isin(batch["index"][node].numpy(), dm.partition[node]).all()
        assert [DIGIT_NAMES[y] for y in batch["label"][node].tolist()] == names[batch["index"][node]].tolist()
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (50, 1, 8, 8) and val["label"].shape == (50,)


def test_labels_as_callable_array_and_tensor_give_the_same_split():
    data = DigitDicts(0, 600)
    common = {"num_nodes": 4, "alpha": 0.2, "seed": 3}
    by_callable = NodeDataModule.from_datasets(data, data, labels=label_of, **common)
    assert by_callable.classes is None  # resolved at setup: reading samples is work
    by_array = NodeDataModule.from_datasets(data, data, labels=list(data.targets_hidden), **common)
    by_tensor = NodeDataModule.from_datasets(data, data, labels=torch.from_numpy(data.targets_hidden), **common)
    for dm in (by_callable, by_array, by_tensor):
        dm.setup()
    assert by_callable.num_classes == 10
    for dm in (by_array, by_tensor):
        assert np.array_equal(dm.train_labels, by_callable.train_labels)
        assert all(np.array_equal(a, b) for a, b in zip(dm.partition, by_callable.partition, strict=True))


def test_worker_processes_give_the_same_batches():
    data = DigitDicts(0, 300)
    batches = []
    for workers in (0, 1):
        dm = NodeDataModule.from_datasets(data, data, num_nodes=2, batch_size=3, labels=label_of, num_workers=workers)
        dm.setup()
        batches.append(next(iter(dm.train_dataloader())))
    assert all(torch.equal(batches[0][key], batches[1][key]) for key in ("image", "label", "index"))


def test_unlabelled_data_splits_iid_and_says_it_has_no_labels():
    data = DigitDicts(0, 103)
    dm = NodeDataModule.from_datasets(data, data, num_nodes=4, batch_size=2)  # alpha="iid" needs no labels
    dm.setup()
    sizes = [len(p) for p in dm.partition]
    assert sum(sizes) == 103 and max(sizes) - min(sizes) <= 1
    with pytest.raises(RuntimeError, match="no training labels.*labels="):
        dm.node_label_histogram()
    assert next(iter(dm.train_dataloader()))["image"].shape == (4, 2, 1, 8, 8)


def test_encode_labels_sorts_any_comparable_values():
    codes, classes = encode_labels(np.array([30, 10, 20, 10]))
    assert codes.tolist() == [2, 0, 1, 0] and classes == (10, 20, 30)
    codes, classes = encode_labels([("b", 1), ("a", 2), ("b", 1)], "labels")
    assert codes.tolist() == [1, 0, 1] and classes == (("a", 2), ("b", 1))
    with pytest.raises(ValueError, match="comparable"):
        encode_labels(np.array([1, "a", None], dtype=object))
    with pytest.raises(ValueError, match=r"1-D.*argmax"):
        encode_labels(np.eye(3))


# ---- a TensorDataset with two input tensors (real MovieLens 100K ratings)


def test_tensor_dataset_with_two_inputs(movielens100k_dir: Path):
    table = np.loadtxt(movielens100k_dir / "u.data", dtype=np.int64)  # user, item, rating, timestamp
    users, items, ratings = (torch.from_numpy(table[:, k].copy()) for k in range(3))
    train = TensorDataset(users[:90_000], items[:90_000], ratings[:90_000].float())
    test = TensorDataset(users[90_000:], items[90_000:], ratings[90_000:].float())
    dm = NodeDataModule.from_datasets(train, test, num_nodes=8, alpha=0.1, batch_size=16, labels=ratings[:90_000])
    assert dm.classes == (1, 2, 3, 4, 5)
    dm.setup()
    u, i, r = next(iter(dm.train_dataloader()))
    assert u.shape == i.shape == r.shape == (8, 16) and u.dtype == torch.int64 and r.dtype == torch.float32
    hist = dm.node_label_histogram()
    for node in range(8):  # rating-skewed nodes: every rating drawn is one the node holds
        assert set((r[node].long() - 1).tolist()) <= set(np.flatnonzero(hist[node]).tolist())
    u_eval, i_eval, r_eval = next(iter(dm.test_dataloader()))
    assert u_eval.shape == (256,) and torch.equal(u_eval, users[90_000:90_256])


# ---- a real Trainer.fit on from_datasets batches


class ShardProbe(pl.LightningModule):
    """A plain LightningModule (one linear model per node) that records the batches it is given."""

    def __init__(self, num_nodes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_nodes, 64, 10))
        self.shapes: list[tuple[tuple[int, ...], ...]] = []
        self.indices: list[torch.Tensor] = []
        self.val_shapes: list[tuple[int, ...]] = []

    def training_step(self, batch, batch_idx):
        image, label = batch["image"], batch["label"]
        self.shapes.append((tuple(image.shape), tuple(label.shape), tuple(batch["index"].shape)))
        self.indices.append(batch["index"].clone())
        logits = torch.einsum("nbd,ndc->nbc", image.flatten(2), self.weight)
        return nn.functional.cross_entropy(logits.flatten(0, 1), label.flatten())

    def validation_step(self, batch, batch_idx):
        self.val_shapes.append(tuple(batch["image"].shape))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _from_digits(**kwargs) -> NodeDataModule:
    data, test = DigitDicts(0, 1400), DigitDicts(1400)
    return NodeDataModule.from_datasets(
        data, test, num_nodes=4, alpha=0.5, batch_size=6, labels=data.targets_hidden, eval_batch_size=100, **kwargs
    )


def test_trainer_fit_gets_node_batches_from_each_nodes_shard(one_torch_thread):
    dm = _from_digits(steps_per_epoch=4)
    model = ShardProbe(4)
    _trainer(max_steps=6, limit_val_batches=2, num_sanity_val_steps=0).fit(model, datamodule=dm)
    assert model.shapes == [((4, 6, 1, 8, 8), (4, 6), (4, 6))] * 6
    assert model.val_shapes and all(shape == (100, 1, 8, 8) for shape in model.val_shapes)
    for index in model.indices:
        for node in range(4):
            assert np.isin(index[node].numpy(), dm.partition[node]).all()
    assert len(torch.cat([i.flatten() for i in model.indices[:4]]).unique()) == 96  # no repeats within a pass
    assert float(model.weight.detach().abs().sum()) > 0


def test_trainer_resumes_mid_epoch_exactly(tmp_path: Path, one_torch_thread):
    full = ShardProbe(4)
    _trainer(max_steps=7, limit_val_batches=0).fit(full, datamodule=_from_digits(steps_per_epoch=5))
    first = ShardProbe(4)
    trainer = _trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(first, datamodule=_from_digits(steps_per_epoch=5))
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = ShardProbe(4)
    _trainer(max_steps=7, limit_val_batches=0).fit(
        resumed, datamodule=_from_digits(steps_per_epoch=5), ckpt_path=tmp_path / "mid.ckpt"
    )
    got = first.indices + resumed.indices
    assert len(got) == 7 and all(torch.equal(a, b) for a, b in zip(got, full.indices, strict=True))


# ---- from_datamodule on an ordinary LightningDataModule


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The user's own collate_fn: a dict instead of a tuple."""
    x, y = zip(*batch, strict=True)
    return {"x": torch.stack(x), "y": torch.stack(y)}


class UserDigitsDataModule(pl.LightningDataModule):
    """Written the ordinary way: datasets made in setup(stage), one loader per stage."""

    def __init__(self, batch_size: int = 16, collate_fn=None) -> None:
        super().__init__()
        self.batch_size, self.collate_fn = batch_size, collate_fn
        self.calls: list[str] = []

    def prepare_data(self) -> None:
        self.calls.append("prepare_data")

    def setup(self, stage: str) -> None:
        self.calls.append(f"setup:{stage}")
        images, labels = _digits()
        y = torch.from_numpy(labels)
        if stage == "fit":
            self.train = TensorDataset(images[:1200], y[:1200])
            self.val = TensorDataset(images[1200:1500], y[1200:1500])
        if stage == "test":
            self.test = TensorDataset(images[1500:], y[1500:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, collate_fn=self.collate_fn)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=64)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test, batch_size=64)


def test_from_datamodule_takes_datasets_batch_size_and_collate_fn():
    user = UserDigitsDataModule(batch_size=8, collate_fn=pad_collate)
    dm = NodeDataModule.from_datamodule(user, num_nodes=4, alpha=0.5, labels=lambda sample: int(sample[1]))
    assert user.calls == ["prepare_data", "setup:fit", "setup:test"]
    assert (dm.batch_size, dm.eval_batch_size, dm.collate_fn) == (8, 64, pad_collate)
    dm.setup()
    assert dm.train_dataset is user.train and dm.test_dataset is user.test and dm.val_dataset is user.val
    assert np.array_equal(dm.train_labels, user.train.tensors[1].numpy())
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (4, 8, 1, 8, 8) and batch["y"].shape == (4, 8)
    hist = dm.node_label_histogram()
    for node in range(4):
        assert set(batch["y"][node].tolist()) <= set(np.flatnonzero(hist[node]).tolist())
    assert len(next(iter(dm.val_dataloader()))["x"]) == 64
    assert sum(len(b["y"]) for b in dm.test_dataloader()) == 297


def test_from_datamodule_needs_labels_for_a_dirichlet_split_and_honours_overrides():
    with pytest.raises(ValueError, match=r"alpha=0\.5.*labels="):
        NodeDataModule.from_datamodule(UserDigitsDataModule(), num_nodes=4, alpha=0.5)
    dm = NodeDataModule.from_datamodule(UserDigitsDataModule(), num_nodes=2, batch_size=3, seed=5)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 1, 8, 8) and y.shape == (2, 3) and dm.seed == 5
    with pytest.raises(TypeError, match="LightningDataModule"):
        NodeDataModule.from_datamodule(DataLoader(TensorDataset(torch.zeros(4))), num_nodes=2)  # type: ignore[arg-type]


# ---- bad input: clear errors before any sample is read


class Untouchable(Dataset):
    """A map-style dataset whose samples must not be read."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        raise AssertionError("a sample was read")


class Stream(IterableDataset):
    def __iter__(self):
        yield from range(3)


@pytest.mark.parametrize(
    ("train", "test", "kwargs", "match"),
    [
        (Untouchable(0), Untouchable(5), {}, r"train_dataset is empty \(Untouchable of length 0\)"),
        (Untouchable(10), Untouchable(0), {}, r"test_dataset is empty"),
        (Untouchable(10), Untouchable(5), {"val_dataset": Untouchable(0)}, r"val_dataset is empty"),
        (Untouchable(10), Stream(), {}, r"test_dataset must be a map-style dataset.*got Stream.*IterableDataset"),
        (Untouchable(10), DataLoader(Untouchable(5)), {}, r"test_dataset must be a map-style.*DataLoader.*\.dataset"),
        (Untouchable(10), Untouchable(5), {"labels": [0] * 9}, r"labels must have one entry.*got shape \(9,\)"),
        (Untouchable(10), Untouchable(5), {"labels": np.zeros((10, 2))}, r"labels must have one entry.*\(10, 2\)"),
        (Untouchable(10), Untouchable(5), {"labels": "label"}, r"labels must be an array-like.*'label'"),
        (Untouchable(10), Untouchable(5), {"alpha": 0.1}, r"alpha=0\.1 .*no labels were found.*Pass labels="),
        (Untouchable(10), Untouchable(5), {"num_nodes": 11}, r"train_dataset has 10 samples.*num_nodes=11"),
        (Untouchable(10), Untouchable(5), {"num_nodes": 1}, r"num_nodes must be an integer >= 2, got 1"),
        (Untouchable(10), Untouchable(5), {"collate_fn": 3}, r"collate_fn must be callable.*3"),
    ],
)
def test_bad_input_is_named_before_any_sample_is_read(train, test, kwargs, match):
    args = {"num_nodes": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        NodeDataModule.from_datasets(train, test, **args)


def test_label_attribute_of_the_wrong_length_is_named_when_labels_are_needed():
    class Mislabelled(Untouchable):
        labels = ["cat", "dog"]  # class names, not one label per sample

    with pytest.raises(ValueError, match=r"train_dataset\.labels has shape \(2,\), not \(10,\)"):
        NodeDataModule.from_datasets(Mislabelled(10), Untouchable(5), num_nodes=2, alpha=1.0)
    dm = NodeDataModule.from_datasets(Mislabelled(10), Untouchable(5), num_nodes=2)  # IID: not needed
    assert dm.classes is None
