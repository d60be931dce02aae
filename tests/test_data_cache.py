"""The decoded-data cache of the CIFAR data modules (lightning_mosaic.data.cache), on small trees of real JPEGs.

The trees hold the first CIFAR-10 test JPEGs of every class, streamed out of the shared archive (no full extraction).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CIFAR10_ARCHIVE_CANDIDATES, _missing_data

import lightning_mosaic.data.cache as cache_module
import lightning_mosaic.data.cifar as cifar_module
from lightning_mosaic.data import CIFAR10DataModule, CIFAR100DataModule
from lightning_mosaic.data.cache import (
    CACHE_FOLDER,
    CACHE_SUFFIX,
    CacheMiss,
    check_cache_dir,
    read_cache_file,
    write_cache_file,
)
from lightning_mosaic.data.cifar10 import CIFAR10_CLASSES

PER_CLASS = 3  # JPEGs per class taken from the archive: 2 go to train/, 1 to test/


@pytest.fixture(scope="module")
def real_jpegs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<dir>/<class>/NNNN.jpg``: the first ``PER_CLASS`` CIFAR-10 test JPEGs of every class."""
    destination = tmp_path_factory.mktemp("cifar10-jpegs")
    extracted = os.environ.get("MOSAIC_CIFAR10_DIR")
    if extracted:
        for name in CIFAR10_CLASSES:
            (destination / name).mkdir()
            for source in sorted((Path(extracted) / "cifar10" / "test" / name).iterdir())[:PER_CLASS]:
                shutil.copyfile(source, destination / name / source.name)
        return destination
    env = os.environ.get("MOSAIC_CIFAR10_ARCHIVE")
    candidates = (Path(env),) if env else CIFAR10_ARCHIVE_CANDIDATES
    archive = next((c for c in candidates if c.is_file()), None)
    if archive is None:
        _missing_data(f"CIFAR-10 archive not found at {', '.join(map(str, candidates))}")
    taken: dict[str, int] = {}
    with tarfile.open(archive, "r|gz") as stream:  # the test split comes first in the archive
        for member in stream:
            parts = member.name.split("/")
            if len(parts) >= 2 and parts[1] == "train":
                break
            if member.isfile() and len(parts) == 4 and parts[1] == "test" and taken.get(parts[2], 0) < PER_CLASS:
                (destination / parts[2]).mkdir(exist_ok=True)
                (destination / parts[2] / parts[3]).write_bytes(stream.extractfile(member).read())
                taken[parts[2]] = taken.get(parts[2], 0) + 1
    assert sorted(taken) == sorted(CIFAR10_CLASSES) and set(taken.values()) == {PER_CLASS}
    return destination


def _tree(real_jpegs: Path, root: Path, classes: tuple[str, ...] = CIFAR10_CLASSES) -> Path:
    """``root/{train,test}/<class>/*.jpg`` from the real JPEGs (class k of ``classes`` gets CIFAR-10 class k's)."""
    for name, source_class in zip(classes, CIFAR10_CLASSES, strict=False):
        files = sorted((real_jpegs / source_class).iterdir())
        for split, chosen in (("train", files[:-1]), ("test", files[-1:])):
            (root / split / name).mkdir(parents=True)
            for source in chosen:
                shutil.copyfile(source, root / split / name / source.name)
    return root


@pytest.fixture
def tree(real_jpegs: Path, tmp_path: Path) -> Path:
    return _tree(real_jpegs, tmp_path / "data")


@pytest.fixture(autouse=True)
def _user_cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the 'auto' fallback (the user cache folder) out of the home folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def _load(root: Path, **kwargs) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(root, num_nodes=2, alpha="iid", batch_size=2, **kwargs)
    dm.setup()
    return dm


def _arrays(dm: CIFAR10DataModule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return dm.train_dataset.images, dm.train_dataset.labels, dm.test_dataset.images, dm.test_dataset.labels


def _assert_same(a: CIFAR10DataModule, b: CIFAR10DataModule) -> None:
    for x, y in zip(_arrays(a), _arrays(b), strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y)


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("decoded although a valid cache entry exists")

    monkeypatch.setattr(cifar_module, "decode_image_files", fail)


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{CACHE_SUFFIX}")) if folder.is_dir() else []


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp")) if folder.is_dir() else []


# ---------------------------------------------------------------------- hits


def test_second_load_reads_the_cache_and_equals_the_decode(tree: Path, monkeypatch: pytest.MonkeyPatch):
    fresh = _load(tree, cache_dir=None)
    first = _load(tree)  # default: cache_dir="auto" -> data_dir/.lightning_mosaic_cache
    assert not first.cache_hit and first.cache_file is not None
    assert first.cache_file.parent == tree / CACHE_FOLDER and first.cache_file.name.startswith("cifar-10-imagefolder-")
    _no_decoding(monkeypatch)
    second = _load(tree)
    assert second.cache_hit and second.cache_file == first.cache_file
    _assert_same(second, fresh)
    _assert_same(first, fresh)
    assert second.train_dataset.images.shape == (20, 3, 32, 32) and len(second.test_dataset) == 10
    assert second.train_dataset.images.is_contiguous() and second.train_dataset.images.numpy().flags.writeable
    assert torch.equal(torch.bincount(second.train_dataset.labels), torch.full((10,), 2))
    assert second.source == str(tree) and _temporaries(tree / CACHE_FOLDER) == []


def test_explicit_folder_is_created_and_serves_several_trees(real_jpegs: Path, tmp_path: Path):
    folder = tmp_path / "shared" / "cache"
    a = _tree(real_jpegs, tmp_path / "a")
    _tree(real_jpegs, tmp_path / "b" / "cifar10")  # found one level down, as the archive extracts
    first_a, first_b = _load(a, cache_dir=folder), _load(tmp_path / "b", cache_dir=str(folder))
    assert first_a.cache_file != first_b.cache_file and len(_entries(folder)) == 2
    assert not (a / CACHE_FOLDER).exists()
    again_a, again_b = _load(a, cache_dir=folder), _load(tmp_path / "b", cache_dir=folder)
    assert again_a.cache_hit and again_b.cache_hit
    _assert_same(again_a, first_a)
    _assert_same(again_b, first_b)


@pytest.mark.parametrize("off", [None, False])
def test_no_cache(tree: Path, off):
    dm = _load(tree, cache_dir=off)
    assert dm.cache_file is None and not dm.cache_hit and not (tree / CACHE_FOLDER).exists()


def test_cifar100_shares_the_code_path(real_jpegs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from lightning_mosaic.data.cifar100 import CIFAR100_CLASSES

    root = _tree(real_jpegs, tmp_path / "c100" / "cifar100", classes=CIFAR100_CLASSES[:10])
    first = CIFAR100DataModule(root.parent, num_nodes=2, alpha="iid", batch_size=2)
    first.setup()
    assert first.cache_file.name.startswith("cifar-100-imagefolder-") and not first.cache_hit
    _no_decoding(monkeypatch)
    second = CIFAR100DataModule(root.parent, num_nodes=2, alpha="iid", batch_size=2)
    second.setup()
    assert second.cache_hit
    _assert_same(second, first)


def test_torchvision_layout_is_cached_and_keyed_on_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torchvision.datasets

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"one")
    calls = []

    class _FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            calls.append(train)
            count = 20 if train else 6
            self.data = np.random.default_rng(len(calls)).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
            self.targets = [i % 10 for i in range(count)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", _FakeCIFAR10)
    first = _load(tmp_path)
    assert calls == [True, False] and first.cache_file.name.startswith("cifar-10-torchvision-")
    second = _load(tmp_path)
    assert calls == [True, False] and second.cache_hit  # torchvision (and its MD5 check) not called again
    _assert_same(second, first)
    (folder / "data_batch_1").write_bytes(b"changed")
    third = _load(tmp_path)
    assert calls == [True, False, True, False] and not third.cache_hit
    assert not torch.equal(third.train_dataset.images, first.train_dataset.images)  # the fake's new data is used


# ---------------------------------------------------------------------- invalidation


def _add(root: Path) -> None:
    shutil.copyfile(root / "train" / "cat" / "0000.jpg", root / "train" / "dog" / "9999.jpg")


def _remove(root: Path) -> None:
    (root / "train" / "ship" / "0001.jpg").unlink()


def _rewrite(root: Path) -> None:  # another real image's bytes under the same name
    (root / "test" / "frog" / "0002.jpg").write_bytes((root / "test" / "truck" / "0002.jpg").read_bytes())


def _rewrite_same_size(root: Path) -> None:  # same bytes again: only the modification time changes
    path = root / "train" / "bird" / "0000.jpg"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def _rename(root: Path) -> None:
    (root / "train" / "deer" / "0000.jpg").rename(root / "train" / "horse" / "0000b.jpg")


@pytest.mark.parametrize("change", [_add, _remove, _rewrite, _rewrite_same_size, _rename], ids=lambda f: f.__name__)
def test_a_changed_tree_invalidates_the_entry(tree: Path, change):
    first = _load(tree)
    change(tree)
    changed = _load(tree)
    assert not changed.cache_hit and changed.cache_file == first.cache_file  # rebuilt, replacing the stale entry
    _assert_same(changed, _load(tree, cache_dir=None))
    assert _load(tree).cache_hit
    assert len(_entries(tree / CACHE_FOLDER)) == 1 and _temporaries(tree / CACHE_FOLDER) == []


def test_the_rewritten_pixels_are_the_ones_loaded(tree: Path):
    first = _load(tree)
    _rewrite(tree)
    changed = _load(tree)
    frog, truck = CIFAR10_CLASSES.index("frog"), CIFAR10_CLASSES.index("truck")
    assert torch.equal(changed.test_dataset.images[frog], changed.test_dataset.images[truck])
    assert not torch.equal(first.test_dataset.images[frog], changed.test_dataset.images[frog])


def test_other_settings_do_not_share_an_entry(tree: Path):
    path = _load(tree).cache_file
    key = {"dataset": "CIFAR-10", "layout": "imagefolder"}
    with pytest.raises(CacheMiss, match="differs in"):
        read_cache_file(path, key)


# ---------------------------------------------------------------------- interrupted and damaged writes


def test_a_failed_rename_leaves_no_entry_and_warns(tree: Path, monkeypatch: pytest.MonkeyPatch):
    def broken_replace(src, dst):
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(cache_module.os, "replace", broken_replace)
        with pytest.warns(UserWarning, match=rf"could not write the decoded-data cache .*{CACHE_FOLDER}.*Input/output"):
            dm = _load(tree)
    assert dm.cache_file is None and not dm.cache_hit
    _assert_same(dm, _load(tree, cache_dir=None))
    folder = tree / CACHE_FOLDER
    assert _entries(folder) == [] and _temporaries(folder) == []
    # the user cache folder (the 'auto' fallback) failed the same way
    assert _entries(Path(os.environ["XDG_CACHE_HOME"]) / "lightning_mosaic") == []
    assert not _load(tree).cache_hit  # nothing half-written was read: decoded again, now cached


def test_an_interrupted_write_removes_its_temporary_file(tree: Path, monkeypatch: pytest.MonkeyPatch):
    real_save = np.save
    calls = []

    def interrupted_save(handle, array, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # after the header and the first array
            raise KeyboardInterrupt
        real_save(handle, array, **kwargs)

    monkeypatch.setattr(cache_module.np, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        _load(tree)
    folder = tree / CACHE_FOLDER
    assert _entries(folder) == [] and _temporaries(folder) == []


def test_a_crashed_writers_temporary_file_is_never_read(tree: Path, monkeypatch: pytest.MonkeyPatch):
    first = _load(tree)
    entry = first.cache_file
    data = entry.read_bytes()
    entry.unlink()
    old = entry.parent / f".{entry.name}.999.0000aaaa.tmp"
    young = entry.parent / f".{entry.name}.998.0000bbbb.tmp"
    for leftover in (old, young):  # what a writer killed mid-write leaves: half of a valid file
        leftover.write_bytes(data[: len(data) // 2])
    os.utime(old, (time.time() - 2 * cache_module.STALE_TEMP_SECONDS,) * 2)
    second = _load(tree)
    assert not second.cache_hit and second.cache_file == entry
    _assert_same(second, first)
    assert not old.exists() and young.exists()  # stale leftovers are removed, a possibly live writer's file is not


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) - 100],  # truncated (e.g. copied while being written by hand)
        lambda data: data + b"\0" * 10,  # longer than its header says
        lambda data: b"not a cache file at all",
        lambda data: data.replace(b'"version": 1', b'"version": 9', 1),
    ],
    ids=["truncated", "trailing", "garbage", "version"],
)
def test_a_damaged_entry_is_rebuilt(tree: Path, damage):
    first = _load(tree)
    first.cache_file.write_bytes(damage(first.cache_file.read_bytes()))
    second = _load(tree)
    assert not second.cache_hit
    _assert_same(second, first)
    assert _load(tree).cache_hit


# ---------------------------------------------------------------------- unwritable locations


def test_auto_falls_back_to_the_user_cache_when_data_dir_cannot_be_written(tree: Path, monkeypatch):
    (tree / CACHE_FOLDER).write_text("a file where the cache folder would go: mkdir fails, even for root")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fallback is silent
        first = _load(tree)
    user = Path(os.environ["XDG_CACHE_HOME"]) / "lightning_mosaic"
    assert first.cache_file is not None and first.cache_file.parent == user
    _no_decoding(monkeypatch)
    assert _load(tree).cache_hit


def test_unwritable_explicit_folder_warns_naming_it_and_still_loads(tree: Path, tmp_path: Path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    folder = blocker / "cache"  # below a file: cannot be created, even by root
    with pytest.warns(UserWarning, match=rf"could not write the decoded-data cache .* to {folder} "):
        dm = _load(tree, cache_dir=folder)
    assert dm.cache_file is None
    _assert_same(dm, _load(tree, cache_dir=None))


def test_a_valid_entry_in_a_read_only_folder_is_read(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / "prebuilt"
    first = _load(tree, cache_dir=folder)

    def no_writes(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache_module, "write_cache_file", no_writes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = _load(tree, cache_dir=folder)
    assert second.cache_hit
    _assert_same(second, first)


# ---------------------------------------------------------------------- bad values


@pytest.mark.parametrize("value", [3, 1.5, "", "   ", b"cache", ["cache"]])
def test_bad_cache_dir_is_named(tree: Path, value):
    with pytest.raises(ValueError, match=r"cache_dir must be 'auto'.*a directory path, or None / False"):
        CIFAR10DataModule(tree, num_nodes=2, cache_dir=value)


def test_cache_dir_that_is_a_file_is_named(tree: Path, tmp_path: Path):
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(ValueError, match=rf"cache_dir {path} exists and is not a directory"):
        _load(tree, cache_dir=path)


def test_check_cache_dir_forms(tmp_path: Path):
    assert check_cache_dir("auto") == "auto" and check_cache_dir(True) == "auto"
    assert check_cache_dir(None) is None and check_cache_dir(False) is None
    assert check_cache_dir(str(tmp_path)) == tmp_path and check_cache_dir(tmp_path) == tmp_path
    assert check_cache_dir("~/x") == Path.home() / "x"


def test_write_and_read_round_trip(tmp_path: Path):
    arrays = {"a": np.arange(12, dtype=np.uint8).reshape(3, 4), "b": np.array([1.5, 2.5]), "c": np.zeros(0, np.int64)}
    key = {"fingerprint": "abc", "classes": ["x", "y"], "image_shape": [3, 32, 32]}
    path = tmp_path / "sub" / f"entry{CACHE_SUFFIX}"
    write_cache_file(path, key, arrays)
    back = read_cache_file(path, key)
    assert list(back) == ["a", "b", "c"]
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and np.array_equal(back[name], array)
    with pytest.raises(CacheMiss, match="differs in fingerprint"):
        read_cache_file(path, {**key, "fingerprint": "abd"})
    with pytest.raises(CacheMiss, match="does not exist"):
        read_cache_file(tmp_path / "missing", key)
