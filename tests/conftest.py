"""Shared test fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Where the shared real data lives: next to the checkout, or the workplace's shared folder (same list as .ci/run).
CIFAR10_ARCHIVE_CANDIDATES = (
    REPO_ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz",
    Path("/work/shared/data/cifar10-jpg.tar.gz"),
)


def _extract(archive: Path, destination: Path) -> None:
    """Extract ``archive`` into ``destination`` (system ``tar`` is ~5x faster than ``tarfile`` on 60k files)."""
    tar = shutil.which("tar")
    if tar is not None:
        subprocess.run([tar, "-xzf", str(archive), "-C", str(destination)], check=True)
        return
    with tarfile.open(archive) as handle:
        if hasattr(tarfile, "data_filter"):
            handle.extractall(destination, filter="data")
        else:  # pragma: no cover - Python without extraction filters
            handle.extractall(destination)


def _ram_tmp_dir(min_free_bytes: int = 1 << 30) -> Path | None:
    """A fresh directory in ``/dev/shm`` (tmpfs) when available, else ``None``.

    Creating and deleting the archive's 60,000 small files on a disk-backed /tmp took 4 s to 45 s on the 2-core
    test machine depending on other I/O, against under 2 s in tmpfs.
    """
    shm = Path("/dev/shm")
    try:
        if not (shm.is_dir() and os.access(shm, os.W_OK)) or shutil.disk_usage(shm).free < min_free_bytes:
            return None
        return Path(tempfile.mkdtemp(prefix="lightning-mosaic-cifar10-", dir=shm))
    except OSError:
        return None


def _missing_data(message: str) -> NoReturn:
    """Fail the test for missing shared data, or skip it when ``MOSAIC_ALLOW_MISSING_DATA=1``."""
    if os.environ.get("MOSAIC_ALLOW_MISSING_DATA") == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Directory holding the real CIFAR-10 JPEG tree (``cifar10/{train,test}/<class>/*.jpg``), extracted once.

    Extracted into tmpfs (``/dev/shm``) when possible, else into pytest's tmp dir; removed at the end.

    The archive is ``$MOSAIC_CIFAR10_ARCHIVE``, else the first of :data:`CIFAR10_ARCHIVE_CANDIDATES` that exists.
    A missing archive fails the test, unless ``MOSAIC_ALLOW_MISSING_DATA=1``, which skips it. If
    ``$MOSAIC_CIFAR10_DIR`` names an already extracted archive (``.ci/run`` sets it), that tree is used as it is
    and left in place.
    """
    extracted = os.environ.get("MOSAIC_CIFAR10_DIR")
    if extracted:
        if not (Path(extracted) / "cifar10" / "train").is_dir():
            pytest.fail(f"MOSAIC_CIFAR10_DIR={extracted} holds no cifar10/train folder", pytrace=False)
        yield Path(extracted)
        return
    if os.environ.get("MOSAIC_CIFAR10_ARCHIVE"):
        candidates: tuple[Path, ...] = (Path(os.environ["MOSAIC_CIFAR10_ARCHIVE"]),)
    else:
        candidates = CIFAR10_ARCHIVE_CANDIDATES
    archive = next((c for c in candidates if c.is_file()), candidates[0])
    if not archive.is_file():
        _missing_data(
            f"CIFAR-10 archive not found at {', '.join(map(str, candidates))}. Set MOSAIC_CIFAR10_ARCHIVE to "
            "the path of cifar10-jpg.tar.gz, or MOSAIC_ALLOW_MISSING_DATA=1 to skip the tests that need it."
        )
    destination = _ram_tmp_dir() or tmp_path_factory.mktemp("cifar10-archive")
    try:
        _extract(archive, destination)
        yield destination
    finally:
        shutil.rmtree(destination, ignore_errors=True)  # 60,000 files: do not leave them to pytest's tmp rotation


# MovieLens 100K as published (u.data, u.item, ...): next to the checkout, or the workplace's shared folder.
MOVIELENS100K_CANDIDATES = (
    REPO_ROOT.parent / "shared" / "data" / "ml-100k",
    Path("/work/shared/data/ml-100k"),
)


@pytest.fixture(scope="session")
def movielens100k_dir() -> Path:
    """Directory holding the real MovieLens 100K files (``u.data``, ``u.item``), read in place (never written).

    ``$MOSAIC_MOVIELENS100K_DIR`` if set, else the first of :data:`MOVIELENS100K_CANDIDATES` holding ``u.data``. A
    missing copy fails the test, unless ``MOSAIC_ALLOW_MISSING_DATA=1``, which skips it.
    """
    override = os.environ.get("MOSAIC_MOVIELENS100K_DIR")
    candidates = (Path(override),) if override else MOVIELENS100K_CANDIDATES
    found = next((c for c in candidates if (c / "u.data").is_file()), None)
    if found is None:
        _missing_data(
            f"MovieLens 100K (u.data) not found in {', '.join(map(str, candidates))}. Set MOSAIC_MOVIELENS100K_DIR to "
            "the extracted ml-100k folder, or MOSAIC_ALLOW_MISSING_DATA=1 to skip the tests that need it."
        )
    return found


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Run the test with one intra-op torch thread, then restore the previous count.

    On the shared 2-core test machine, small training runs were 5-15x slower with two threads than with one (same
    numbers): the per-op work is too small to split and the threads wait on each other under load.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
