"""Downloads that leave nothing behind when they fail: fetched under a temporary name, moved into place when done.

Pure standard-library code (no torch, no Lightning), used by the data modules that download
(:class:`~lightning_mosaic.data.cifar.CIFARDataModule`, :class:`~lightning_mosaic.data.MovieLensDataModule`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["TEMPORARY_PREFIX", "download_into"]

#: Name start of the temporary folder a download is fetched into (next to ``data_dir`` or inside it).
TEMPORARY_PREFIX = ".lightning_mosaic-download-"


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent folder."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")  # pragma: no cover - the root always exists


def download_into(data_dir: str | Path, fetch: Callable[[Path], None]) -> None:
    """Run ``fetch(folder)`` in a fresh temporary folder, then move what it wrote into ``data_dir``.

    The temporary folder, ``.lightning_mosaic-download-<random>``, is made in the nearest existing folder on the way
    to ``data_dir`` (``data_dir`` itself when it exists), so that the move is a rename on the same file system.
    Until ``fetch`` returns, ``data_dir`` and its missing parent folders are not created; if ``fetch`` raises (no
    network, a checksum mismatch, an interrupt), the temporary folder and everything in it are deleted and the
    error propagates: nothing is left behind. When it returns, ``data_dir`` (and its parents) is created and every
    entry ``fetch`` wrote at the top of the folder is renamed into it whole, so a reader of ``data_dir`` never sees
    a partly written entry. An entry that exists in ``data_dir`` by then (written meanwhile by another process) is
    kept and the fetched copy discarded.

    Args:
        data_dir: The folder the downloaded files belong in (created if missing, only after a complete download).
        fetch: Writes the download into the folder it is given (a ``Path``); raises on failure.

    Raises:
        Whatever ``fetch`` raises, after the cleanup. ``OSError`` if ``data_dir`` cannot be created (e.g. a file of
        that name exists) or the temporary folder cannot be made.
    """
    target = Path(data_dir)
    temporary = Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX, dir=_existing_ancestor(target)))
    try:
        fetch(temporary)
        target.mkdir(parents=True, exist_ok=True)
        for entry in sorted(temporary.iterdir()):
            destination = target / entry.name
            if not destination.exists():
                shutil.move(str(entry), str(destination))  # a rename (same file system), else a copy
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
