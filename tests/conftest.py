"""Shared test fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CIFAR10_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


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


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Directory holding the real CIFAR-10 JPEG tree (``cifar10/{train,test}/<class>/*.jpg``), extracted once.

    The archive is ``$MOSAIC_CIFAR10_ARCHIVE`` or ``<repo>/../shared/data/cifar10-jpg.tar.gz``. A missing archive
    fails the test, unless ``MOSAIC_ALLOW_MISSING_DATA=1``, which skips it.
    """
    archive = Path(os.environ.get("MOSAIC_CIFAR10_ARCHIVE") or DEFAULT_CIFAR10_ARCHIVE)
    if not archive.is_file():
        message = (
            f"CIFAR-10 archive not found at {archive}. Set MOSAIC_CIFAR10_ARCHIVE to the path of "
            "cifar10-jpg.tar.gz, or MOSAIC_ALLOW_MISSING_DATA=1 to skip the tests that need it."
        )
        if os.environ.get("MOSAIC_ALLOW_MISSING_DATA") == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    destination = tmp_path_factory.mktemp("cifar10-archive")
    _extract(archive, destination)
    yield destination
    shutil.rmtree(destination, ignore_errors=True)  # 60,000 files: do not leave them to pytest's tmp rotation
