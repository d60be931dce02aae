"""On-disk cache of decoded arrays (e.g. the 60,000 decoded CIFAR JPEGs), validated against its source files.

Pure data code (NumPy and the standard library; no torch, no Lightning), used by
:class:`~lightning_mosaic.data.cifar.CIFARDataModule`.

**File format.** One file ``<name>-<16 hex digits>.lmcache`` holding consecutive ``.npy`` records (each readable
with ``numpy.load`` on the open file, one call per record): first a UTF-8 JSON header stored as a 1-D uint8 array,
then the arrays in the order the header lists them. The header holds ``format``, ``version``, the ``key`` the
entry was built for (dataset, layout, class names, image shape and the fingerprint of the source files), the
name, dtype and shape of every array, the source folder and the creation time. The 16 hex digits are the start of
the SHA-256 of the resolved source folder, so that one cache folder can serve several trees.

**Validation.** An entry is used only if its header parses, its ``format``, ``version`` and ``key`` equal what the
caller expects, every array has the dtype and shape the header lists, and the file ends right after the last
array. The key's fingerprint is the SHA-256 of every source file's relative path, size and modification time in
nanoseconds (one ``stat`` per file, nothing decoded): adding, removing, renaming or rewriting a file changes it.
(A rewrite that keeps both the size and the nanosecond modification time, e.g. ``touch -r`` after editing, goes
unnoticed.) Any mismatch or read error is a miss: the caller rebuilds and the entry is replaced.

**Writing.** To a temporary file ``.<entry>.<pid>.<random>.tmp`` in the same folder, flushed and ``fsync``-ed,
then renamed over the entry with ``os.replace`` (atomic on POSIX): a reader sees the old entry, the new one or
none, never a partial file, and a crash mid-write leaves only a temporary file, which is never read (and is
deleted by a later write once it is an hour old). Concurrent writers of the same entry each write their own
temporary file; the last rename wins, and both are complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CACHE_FOLDER",
    "CACHE_SUFFIX",
    "CACHE_VERSION",
    "CacheMiss",
    "CacheResult",
    "cache_directories",
    "check_cache_dir",
    "fingerprint_files",
    "load_or_build",
    "read_cache_file",
    "user_cache_dir",
    "write_cache_file",
]

log = logging.getLogger(__name__)

#: Version of the file layout; a different version in a file's header is a miss.
CACHE_VERSION = 1
#: ``format`` field of the header.
CACHE_FORMAT = "lightning_mosaic array cache"
#: File name ending of cache entries.
CACHE_SUFFIX = ".lmcache"
#: Folder created in ``data_dir`` by ``cache_dir="auto"``.
CACHE_FOLDER = ".lightning_mosaic_cache"
#: Temporary files of crashed writers older than this many seconds are deleted by the next write.
STALE_TEMP_SECONDS = 3600.0


class CacheMiss(Exception):
    """A cache entry is missing, unreadable or was built for other source files; the message says which."""


@dataclass(frozen=True)
class CacheResult:
    """What :func:`load_or_build` did.

    Attributes:
        arrays: The arrays, by name.
        path: The entry read or written; ``None`` when caching is off or no folder could be written.
        hit: ``True`` when ``arrays`` were read from ``path`` (nothing was built).
    """

    arrays: dict[str, np.ndarray]
    path: Path | None
    hit: bool


# ---------------------------------------------------------------------- where


def check_cache_dir(value: Any, name: str = "cache_dir") -> str | Path | None:
    """Normalize a ``cache_dir`` argument (no disk access).

    Returns:
        ``"auto"`` for ``"auto"`` or ``True``; ``None`` for ``None`` or ``False`` (no cache); else the path.

    Raises:
        ValueError: ``value`` is of another type or an empty string (the message names ``name``).
    """
    if value is None or value is False:
        return None
    if value is True or value == "auto":
        return "auto"
    if isinstance(value, (str, os.PathLike)) and str(os.fspath(value)).strip():
        return Path(os.fspath(value)).expanduser()
    raise ValueError(
        f"{name} must be 'auto' (a {CACHE_FOLDER} folder in data_dir, else the user cache folder), a directory "
        f"path, or None / False for no cache; got {value!r}"
    )


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lightning_mosaic``, else ``~/.cache/lightning_mosaic``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lightning_mosaic"


def cache_directories(cache_dir: str | Path | None, data_dir: str | Path) -> tuple[Path, ...]:
    """The folders to read entries from, in order; entries are written to the first one that accepts them.

    ``"auto"``: ``data_dir/.lightning_mosaic_cache``, then :func:`user_cache_dir`; a path: that folder alone
    (created when the first entry is written); ``None``: none (no cache).

    Raises:
        ValueError: ``cache_dir`` is a path that exists and is not a folder.
    """
    if cache_dir is None:
        return ()
    if cache_dir == "auto":
        return (Path(data_dir).expanduser() / CACHE_FOLDER, user_cache_dir())
    cache_dir = Path(cache_dir)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise ValueError(f"cache_dir {cache_dir} exists and is not a directory; pass a folder (created if missing)")
    return (cache_dir,)


def entry_name(stem: str, source: str | Path) -> str:
    """File name of the entry for ``source`` (a folder): ``<stem>-<16 hex digits of its resolved path>.lmcache``."""
    digest = hashlib.sha256(str(Path(source).resolve()).encode()).hexdigest()[:16]
    return f"{stem}-{digest}{CACHE_SUFFIX}"


# ---------------------------------------------------------------------- what


def fingerprint_files(root: str | Path, files: Sequence[str | Path]) -> str:
    """SHA-256 (hex) of the relative path (to ``root``), size and modification time (ns) of every file, in order.

    One ``stat`` per file, no read: about 0.3-0.5 s for the 60,000 CIFAR-10 JPEGs on 2 shared cores.

    Raises:
        OSError: A file cannot be ``stat``-ed (e.g. removed meanwhile).
    """
    prefix = os.path.join(os.fspath(root), "")
    paths = [os.fspath(path) for path in files]
    stats = list(map(os.stat, paths))
    if all(path.startswith(prefix) for path in paths):
        cut = len(prefix)
        relative = [path[cut:] for path in paths]
    else:
        relative = [os.path.relpath(path, prefix) for path in paths]
    text = "".join([f"{r}\0{st.st_size}\0{st.st_mtime_ns}\n" for r, st in zip(relative, stats, strict=True)])
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


# ---------------------------------------------------------------------- reading and writing


def _header_array(header: Mapping[str, Any]) -> np.ndarray:
    return np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)


def read_cache_file(path: str | Path, key: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Read the arrays of the entry ``path`` if it was built for ``key``, else raise :class:`CacheMiss`.

    Arrays are read into memory (about 0.1 s for the 184 MB of decoded CIFAR-10), not memory-mapped, so that
    they behave like freshly decoded ones and later changes to the file cannot reach them.

    Raises:
        CacheMiss: The file is missing or unreadable, not a cache file of this version, built for another key,
            or truncated / longer than its header says (the message says which).
    """
    path = Path(path)
    expected = json.loads(json.dumps(key, sort_keys=True))  # what the header holds after a JSON round trip
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            raw = np.load(handle, allow_pickle=False)
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise CacheMiss(f"{path} is not a cache file (first record is {raw.dtype} {raw.shape})")
            try:
                header = json.loads(raw.tobytes().decode())
            except ValueError as exc:
                raise CacheMiss(f"{path} has an unreadable header ({exc})") from exc
            if not isinstance(header, dict) or header.get("format") != CACHE_FORMAT:
                raise CacheMiss(f"{path} is not a {CACHE_FORMAT} file")
            if header.get("version") != CACHE_VERSION:
                raise CacheMiss(f"{path} has cache version {header.get('version')!r}, not {CACHE_VERSION}")
            stored = header.get("key")
            if stored != expected:
                differ = sorted(
                    k for k in set(expected) | set(stored or {}) if (stored or {}).get(k) != expected.get(k)
                )
                raise CacheMiss(f"{path} was built for other source files or settings (differs in {', '.join(differ)})")
            arrays: dict[str, np.ndarray] = {}
            for spec in header.get("arrays", []):
                array = np.load(handle, allow_pickle=False)
                if array.dtype.str != spec["dtype"] or list(array.shape) != spec["shape"]:
                    raise CacheMiss(
                        f"{path}: array {spec['name']!r} is {array.dtype.str} {list(array.shape)}, header says "
                        f"{spec['dtype']} {spec['shape']}"
                    )
                arrays[spec["name"]] = array
            if handle.tell() != size:
                raise CacheMiss(f"{path} holds {size - handle.tell()} bytes after its last array")
    except CacheMiss:
        raise
    except FileNotFoundError as exc:
        raise CacheMiss(f"{path} does not exist") from exc
    except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise CacheMiss(f"{path} is unreadable or truncated ({type(exc).__name__}: {exc})") from exc
    return arrays


def _remove_stale_temporaries(directory: Path, name: str) -> None:
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(f".{name}.") and entry.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS:
                        os.unlink(entry.path)


def write_cache_file(
    path: str | Path, key: Mapping[str, Any], arrays: Mapping[str, np.ndarray], source: str | Path = ""
) -> None:
    """Write ``arrays`` as the entry ``path`` for ``key``: temporary file, ``fsync``, atomic rename.

    Creates the folder if needed. On any error (including ``KeyboardInterrupt``) the temporary file is removed and
    the error propagates; an existing entry is then left as it was.

    Raises:
        OSError: The folder cannot be created or written, the disk is full, the rename fails, ...
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(directory, path.name)
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    header = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "key": dict(key),
        "arrays": [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape)} for n, a in arrays.items()],
        "source": str(source),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    temporary = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # O_EXCL: never write into another writer's file; mode 0o666 minus the umask, like an ordinary file.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, _header_array(header), allow_pickle=False)
            for array in arrays.values():
                np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (best effort)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# ---------------------------------------------------------------------- both


def load_or_build(
    build: Callable[[], Mapping[str, np.ndarray]],
    *,
    key: Mapping[str, Any],
    stem: str,
    source: str | Path,
    directories: Sequence[Path],
) -> CacheResult:
    """The arrays for ``key``: read from the first valid entry in ``directories``, else ``build()`` and cache them.

    Entry name: :func:`entry_name` of ``stem`` and ``source``. A miss (no entry, or one built for another key,
    unreadable or truncated) is logged and rebuilt. The built arrays go to the first of ``directories`` that can
    be written (a stale entry there is replaced); if none can, a ``UserWarning`` names every folder tried and why,
    and the arrays are returned uncached. With no ``directories``, this is just ``build()``.

    Raises:
        Whatever ``build`` raises.
    """
    name = entry_name(stem, source)
    for directory in directories:
        path = directory / name
        if not path.exists():
            continue
        try:
            arrays = read_cache_file(path, key)
        except CacheMiss as miss:
            log.info("decoded-data cache miss: %s; rebuilding", miss)
            continue
        log.info("decoded data read from the cache %s", path)
        return CacheResult(arrays, path, True)
    arrays = dict(build())
    failures = []
    for directory in directories:
        path = directory / name
        try:
            write_cache_file(path, key, arrays, source=source)
        except OSError as exc:
            failures.append(f"{directory} ({type(exc).__name__}: {exc.strerror or exc})")
            continue
        log.info("decoded data written to the cache %s", path)
        return CacheResult(arrays, path, False)
    if failures:
        warnings.warn(
            f"could not write the decoded-data cache of {source} to {'; nor to '.join(failures)}. Loading works "
            "without it, but the next start decodes again: pass cache_dir=<a writable folder>, or cache_dir=None "
            "to silence this",
            UserWarning,
            stacklevel=3,
        )
    return CacheResult(arrays, None, False)
