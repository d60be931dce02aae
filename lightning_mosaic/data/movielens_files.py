"""MovieLens files as published by GroupLens: strict parsers, id remapping, per-user splits, user-to-node assignment.

Pure Python/NumPy (no torch, no Lightning). Three releases are understood:

| variant | ratings file | separator | encoding | rating grid | movies file |
|---|---|---|---|---|---|
| ``100k`` | ``u.data`` | tab | latin-1 | 1..5, step 1 | ``u.item`` (``|``, 19 genre flags, latin-1) |
| ``1m`` | ``ratings.dat`` | ``::`` | latin-1 | 1..5, step 1 | ``movies.dat`` (``::``, ``|``-joined genres, latin-1) |
| ``latest-small`` | ``ratings.csv`` (header) | ``,`` | UTF-8 | 0.5..5, step 0.5 | ``movies.csv`` (quoted CSV, UTF-8) |

Formats: the ``README`` files of the GroupLens archives (https://grouplens.org/datasets/movielens/). Parsing is
strict: a malformed row raises :class:`MovieLensFormatError` naming the file, the 1-based line number and what was
wrong; nothing is silently dropped, shifted or coerced.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightning_mosaic._validation import check_int
from lightning_mosaic.data.partition import dirichlet_partition

__all__ = [
    "MovieLensFormatError",
    "MovieLensVariant",
    "VARIANTS",
    "Ratings",
    "Movies",
    "read_ratings",
    "read_movies",
    "remap_ids",
    "split_per_user",
    "assign_users_to_nodes",
    "dominant_genre",
]


class MovieLensFormatError(ValueError):
    """A MovieLens file holds a malformed row; the message names the file, the line and what was wrong."""


@dataclass(frozen=True)
class MovieLensVariant:
    """One MovieLens release: where its files are, how they are written, and where GroupLens publishes it.

    Attributes:
        name: ``"100k"``, ``"1m"`` or ``"latest-small"``.
        folder: Folder the official archive extracts to (``ml-100k``, ...).
        ratings_file: Name of the ratings file inside ``folder``.
        movies_file: Name of the movies (titles and genres) file inside ``folder``.
        url: Official archive URL.
        md5: MD5 of the archive, or ``None`` where GroupLens updates it (``latest-small``).
        rating_min: Smallest rating on the grid (stars).
        rating_max: Largest rating on the grid (stars).
        rating_step: Grid step (stars): 1 for whole stars, 0.5 for half stars.
    """

    name: str
    folder: str
    ratings_file: str
    movies_file: str
    url: str
    md5: str | None
    rating_min: float
    rating_max: float
    rating_step: float

    @property
    def grid(self) -> np.ndarray:
        """The allowed ratings, ascending: ``[1, 2, 3, 4, 5]`` or ``[0.5, 1.0, ..., 5.0]``."""
        count = round((self.rating_max - self.rating_min) / self.rating_step) + 1
        return self.rating_min + self.rating_step * np.arange(count, dtype=np.float64)


_BASE_URL = "https://files.grouplens.org/datasets/movielens/"
#: The releases understood, by name. MD5s are GroupLens's published ``*.zip.md5`` values.
VARIANTS: dict[str, MovieLensVariant] = {
    # 943 users x 1682 movies, 100,000 ratings
    "100k": MovieLensVariant(
        name="100k",
        folder="ml-100k",
        ratings_file="u.data",
        movies_file="u.item",
        url=_BASE_URL + "ml-100k.zip",
        md5="0e33842e24a9c977be4e0107933c0723",
        rating_min=1.0,
        rating_max=5.0,
        rating_step=1.0,
    ),
    # 6040 users x 3706 rated movies, 1,000,209 ratings
    "1m": MovieLensVariant(
        name="1m",
        folder="ml-1m",
        ratings_file="ratings.dat",
        movies_file="movies.dat",
        url=_BASE_URL + "ml-1m.zip",
        md5="c4d9eecfca2ab87c1945afe126590906",
        rating_min=1.0,
        rating_max=5.0,
        rating_step=1.0,
    ),
    # 610 users x 9724 rated movies in the 2018 release; GroupLens updates this archive, hence no MD5
    "latest-small": MovieLensVariant(
        name="latest-small",
        folder="ml-latest-small",
        ratings_file="ratings.csv",
        movies_file="movies.csv",
        url=_BASE_URL + "ml-latest-small.zip",
        md5=None,
        rating_min=0.5,
        rating_max=5.0,
        rating_step=0.5,
    ),
}

#: The 19 genre flags of ``u.item`` (MovieLens 100K), in column order (the file ``u.genre``).
GENRES_100K: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_NO_GENRE = "(no genres listed)"  # latest-small's marker for a movie without genres
_CSV_RATINGS_HEADER = ["userId", "movieId", "rating", "timestamp"]
_CSV_MOVIES_HEADER = ["movieId", "title", "genres"]


@dataclass(frozen=True)
class Ratings:
    """The rows of a ratings file, in file order.

    Attributes:
        users: Original user ids, int64 ``(N,)``.
        items: Original movie ids, int64 ``(N,)``.
        ratings: Ratings in stars, float64 ``(N,)``, on the variant's grid.
        timestamps: Seconds since the Unix epoch, int64 ``(N,)``.
        lines: 1-based line number of each row in its file, int64 ``(N,)``.
        path: The file read.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    lines: np.ndarray
    path: Path

    def __len__(self) -> int:
        return int(self.users.shape[0])


@dataclass(frozen=True)
class Movies:
    """The rows of a movies file.

    Attributes:
        ids: Original movie ids, int64 ``(M,)``, in file order.
        titles: Titles, decoded with the file's encoding.
        genres: Multi-hot genre membership, bool ``(M, G)``; column ``g`` is ``genre_names[g]``.
        genre_names: The ``G`` genre names.
    """

    ids: np.ndarray
    titles: list[str]
    genres: np.ndarray
    genre_names: tuple[str, ...]


def _variant(variant: str | MovieLensVariant) -> MovieLensVariant:
    if isinstance(variant, MovieLensVariant):
        return variant
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(map(repr, VARIANTS))}; got {variant!r}")
    return VARIANTS[variant]


def _lines(path: Path, encoding: str) -> list[str]:
    """The file's lines without line endings (``\\n`` or ``\\r\\n``); a final newline adds no empty line."""
    try:
        text = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise MovieLensFormatError(f"{path}, line {line}: not valid {encoding} text ({exc.reason})") from exc
    lines = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _fail(path: Path, line: int, what: str, row: str) -> MovieLensFormatError:
    shown = row if len(row) <= 80 else row[:77] + "..."
    return MovieLensFormatError(f"{path}, line {line}: {what}; the line reads {shown!r}")


def _int_field(path: Path, line: int, row: str, name: str, text: str, minimum: int) -> int:
    stripped = text.strip()
    if not (stripped.isascii() and stripped.isdigit()) or int(stripped) < minimum:
        raise _fail(path, line, f"{name} {text!r} is not an integer >= {minimum}", row)
    return int(stripped)


def read_ratings(path: str | Path, variant: str | MovieLensVariant) -> Ratings:
    """Read and check a MovieLens ratings file.

    Every row must have exactly 4 fields (user, movie, rating, timestamp): user and movie ids integers ``>= 1``,
    the timestamp an integer ``>= 0``, the rating a number on the variant's grid (``1..5`` whole stars for 100K and
    1M, ``0.5..5`` in half stars for latest-small). ``ratings.csv`` must start with the header
    ``userId,movieId,rating,timestamp``. No (user, movie) pair may appear twice.

    Args:
        path: The ratings file (``u.data``, ``ratings.dat`` or ``ratings.csv``).
        variant: ``"100k"``, ``"1m"``, ``"latest-small"`` or a :class:`MovieLensVariant`; decides the separator,
            the encoding and the grid.

    Returns:
        The rows in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        MovieLensFormatError: A malformed row (wrong field count, non-integer id or timestamp, rating not a number,
            off the grid or out of range, a duplicate (user, movie) pair, a bad header, an empty line, undecodable
            bytes); the message names the file and the 1-based line number.
        ValueError: Unknown ``variant``; the file holds no ratings.
    """
    spec = _variant(variant)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MovieLens {spec.name} ratings file {path} does not exist")
    separator = {"100k": "\t", "1m": "::", "latest-small": ","}[spec.name]
    rows = _lines(path, "utf-8" if spec.name == "latest-small" else "latin-1")
    first = 0
    if spec.name == "latest-small":
        if not rows or rows[0].strip().split(",") != _CSV_RATINGS_HEADER:
            header = rows[0] if rows else ""
            raise _fail(path, 1, f"expected the header {','.join(_CSV_RATINGS_HEADER)!r}", header)
        first = 1
    count = len(rows) - first
    users = np.empty(count, dtype=np.int64)
    items = np.empty(count, dtype=np.int64)
    ratings = np.empty(count, dtype=np.float64)
    stamps = np.empty(count, dtype=np.int64)
    grid_min, grid_max, step = spec.rating_min, spec.rating_max, spec.rating_step
    for k, row in enumerate(rows[first:]):
        line = first + k + 1
        fields = row.split(separator)
        if len(fields) != 4:
            what = "empty line" if not row.strip() else f"{len(fields)} fields"
            raise _fail(path, line, f"{what}; expected 4 ({separator!r}-separated user, movie, rating, time)", row)
        users[k] = _int_field(path, line, row, "user id", fields[0], 1)
        items[k] = _int_field(path, line, row, "movie id", fields[1], 1)
        try:
            value = float(fields[2])
        except ValueError:
            raise _fail(path, line, f"rating {fields[2]!r} is not a number", row) from None
        steps = (value - grid_min) / step if math.isfinite(value) else math.nan
        if not (grid_min <= value <= grid_max) or abs(steps - round(steps)) > 1e-9:
            allowed = f"{grid_min:g}..{grid_max:g} in steps of {step:g}"
            raise _fail(path, line, f"rating {fields[2]!r} is not on the {spec.name} grid ({allowed})", row)
        ratings[k] = grid_min + step * round(steps)
        stamps[k] = _int_field(path, line, row, "timestamp", fields[3], 0)
    if count == 0:
        raise ValueError(f"MovieLens ratings file {path} holds no ratings")
    lines = np.arange(first + 1, first + count + 1, dtype=np.int64)
    order = np.lexsort((items, users))
    same = (users[order][1:] == users[order][:-1]) & (items[order][1:] == items[order][:-1])
    if same.any():
        a, b = np.sort(order[np.flatnonzero(same)[0] : np.flatnonzero(same)[0] + 2])
        raise _fail(
            path,
            int(lines[b]),
            f"user {users[b]} rates movie {items[b]} a second time (first at line {lines[a]})",
            rows[first + b],
        )
    return Ratings(users, items, ratings, stamps, lines, path)


def read_movies(path: str | Path, variant: str | MovieLensVariant) -> Movies:
    """Read and check a MovieLens movies file (ids, titles, genres).

    ``u.item`` (100K): 24 ``|``-separated fields, the last 19 genre flags ``0``/``1`` (:data:`GENRES_100K`),
    latin-1. ``movies.dat`` (1M): ``id::title::genres`` with genres joined by ``|``, latin-1. ``movies.csv``
    (latest-small): header ``movieId,title,genres``, CSV quoting, UTF-8; ``(no genres listed)`` means none. For 1M
    and latest-small the genre names are those found in the file, sorted.

    Args:
        path: The movies file.
        variant: ``"100k"``, ``"1m"``, ``"latest-small"`` or a :class:`MovieLensVariant`.

    Returns:
        The movies in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        MovieLensFormatError: Wrong field count, non-integer id, genre flag not 0/1, duplicate movie id, bad
            header, undecodable bytes; the message names the file and line.
    """
    spec = _variant(variant)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MovieLens {spec.name} movies file {path} does not exist")
    ids: list[int] = []
    titles: list[str] = []
    genre_lists: list[list[str]] = []
    flags: list[list[bool]] = []
    if spec.name == "latest-small":
        rows = _lines(path, "utf-8")
        if not rows or rows[0].strip().split(",") != _CSV_MOVIES_HEADER:
            raise _fail(path, 1, f"expected the header {','.join(_CSV_MOVIES_HEADER)!r}", rows[0] if rows else "")
        parsed = enumerate(csv.reader(rows[1:]), start=2)
        split_rows = ((line, fields, rows[line - 1]) for line, fields in parsed)
    else:
        rows = _lines(path, "latin-1")
        separator = "|" if spec.name == "100k" else "::"
        split_rows = ((k + 1, row.split(separator), row) for k, row in enumerate(rows))
    expected = 5 + len(GENRES_100K) if spec.name == "100k" else 3
    for line, fields, row in split_rows:
        if len(fields) != expected:
            raise _fail(path, line, f"{len(fields)} fields; expected {expected}", row)
        ids.append(_int_field(path, line, row, "movie id", fields[0], 1))
        titles.append(fields[1])
        if spec.name == "100k":
            if any(flag not in ("0", "1") for flag in fields[5:]):
                raise _fail(path, line, "genre flags must be 0 or 1", row)
            flags.append([flag == "1" for flag in fields[5:]])
        else:
            genre_lists.append([] if fields[2] == _NO_GENRE else fields[2].split("|"))
    id_array = np.asarray(ids, dtype=np.int64)
    unique, counts = np.unique(id_array, return_counts=True)
    if (counts > 1).any():
        movie = int(unique[np.argmax(counts > 1)])
        lines = [i + (2 if spec.name == "latest-small" else 1) for i in np.flatnonzero(id_array == movie)]
        raise MovieLensFormatError(
            f"{path}, line {lines[1]}: movie id {movie} appears again (first at line {lines[0]})"
        )
    if spec.name == "100k":
        names = GENRES_100K
        genres = np.asarray(flags, dtype=bool).reshape(len(ids), len(names))
    else:
        names = tuple(sorted({g for gs in genre_lists for g in gs}))
        column = {name: g for g, name in enumerate(names)}
        genres = np.zeros((len(ids), len(names)), dtype=bool)
        for m, gs in enumerate(genre_lists):
            genres[m, [column[g] for g in gs]] = True
    return Movies(id_array, titles, genres, names)


def remap_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map original ids to contiguous 0-based indices in increasing id order.

    The result depends only on the set of ids, not on the row order: index ``k`` is the ``k``-th smallest id.

    Args:
        ids: Integer ids, shape ``(N,)``.

    Returns:
        ``(index, originals)``: int64 ``(N,)`` with ``originals[index] == ids``, and the sorted distinct ids,
        int64 ``(U,)``.
    """
    originals, index = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
    return index.astype(np.int64).reshape(-1), originals


def split_per_user(users: np.ndarray, items: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Seeded per-user train/test split of ratings.

    User ``u`` with ``m`` ratings gets ``t = min(round(test_fraction * m), m - 1)`` test ratings (``0`` when
    ``m = 1``): every user keeps at least one training rating, and every user with ``m >= 2`` and
    ``round(test_fraction * m) >= 1`` has test ratings. The ``t`` are chosen uniformly among the user's ratings
    with random keys from ``numpy.random.default_rng(SeedSequence([seed, 2]))`` drawn in (user, item) order, so
    the split depends on the set of ratings and the seed, never on the row order of the file.

    Args:
        users: User index per rating, int ``(N,)``.
        items: Item index per rating, int ``(N,)``; (user, item) pairs must be distinct.
        test_fraction: Fraction of each user's ratings held out, in ``[0, 1)``.
        seed: Non-negative seed.

    Returns:
        Boolean ``(N,)``, ``True`` for test ratings.

    Raises:
        ValueError: ``test_fraction`` not in ``[0, 1)``; ``seed < 0``; mismatched shapes.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be a number in [0, 1); got {test_fraction!r}")
    seed = check_int("seed", seed, 0)
    users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    if users.shape != items.shape or users.ndim != 1:
        raise ValueError(f"users and items must have the same shape (N,); got {users.shape} and {items.shape}")
    canonical = np.lexsort((items, users))  # (user, item) order
    keys = np.empty(len(users))
    keys[canonical] = np.random.default_rng(np.random.SeedSequence([seed, 2])).random(len(users))
    order = np.lexsort((keys, users))  # by user, then by random key
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    sizes = np.diff(np.r_[starts, len(users)])
    n_test = np.minimum(np.floor(test_fraction * sizes + 0.5).astype(np.int64), sizes - 1)
    rank = np.arange(len(users)) - np.repeat(starts, sizes)
    test = np.zeros(len(users), dtype=bool)
    test[order] = rank < np.repeat(n_test, sizes)
    return test


def dominant_genre(users: np.ndarray, items: np.ndarray, item_genres: np.ndarray, num_users: int) -> np.ndarray:
    """Each user's most rated genre (multi-hot counts over the user's ratings; ties go to the lower genre index).

    Args:
        users: User index per rating, int ``(N,)``.
        items: Item index per rating, int ``(N,)``.
        item_genres: Multi-hot genres per item, bool ``(I, G)``.
        num_users: ``U``.

    Returns:
        int64 ``(U,)`` genre index per user (0 for a user without ratings).
    """
    counts = np.zeros((num_users, item_genres.shape[1]), dtype=np.int64)
    np.add.at(counts, users, item_genres[items].astype(np.int64))
    return counts.argmax(axis=1).astype(np.int64)


def assign_users_to_nodes(
    num_users: int,
    num_nodes: int,
    alpha: float | str = "iid",
    *,
    seed: int = 0,
    user_labels: np.ndarray | None = None,
    min_users: int = 1,
) -> np.ndarray:
    """Assign every user (all of their ratings) to exactly one node.

    Delegates to :func:`~lightning_mosaic.data.dirichlet_partition` over users: with ``user_labels=None`` every
    user has the same label, so ``alpha = "iid"`` spreads users evenly by a seeded permutation (node sizes differ
    by at most one user) and a finite ``alpha`` draws node shares ``p ~ Dirichlet(alpha * 1_n)`` (skewed node
    sizes, smaller alpha = more skew). With ``user_labels`` (e.g. each user's :func:`dominant_genre`) the split is
    the usual per-label Dirichlet split: small ``alpha`` puts users of the same genre on the same few nodes.

    Args:
        num_users: ``U >= num_nodes``.
        num_nodes: ``n >= 2``.
        alpha: Dirichlet concentration ``> 0``, or ``"iid"`` / ``float('inf')``.
        seed: Non-negative seed.
        user_labels: Optional int label per user, ``(U,)``.
        min_users: Minimum users per node, ``>= 1`` (every node must have training data).

    Returns:
        int64 ``(U,)``: the node of each user.

    Raises:
        ValueError: As :func:`~lightning_mosaic.data.dirichlet_partition` (e.g. fewer users than
            ``min_users * num_nodes``).
    """
    num_users = check_int("num_users", num_users, 1)
    labels = np.zeros(num_users, dtype=np.int64) if user_labels is None else np.asarray(user_labels)
    if labels.shape != (num_users,):
        raise ValueError(f"user_labels must have shape ({num_users},); got {labels.shape}")
    min_users = check_int("min_users", min_users, 1)
    try:
        shards = dirichlet_partition(labels, num_nodes, alpha, seed=seed, min_samples=min_users)
    except ValueError as error:  # the partitioner speaks of samples; here they are users, the option min_users
        raise ValueError(str(error).replace("min_samples", "min_users").replace(" samples", " users")) from error
    node_of = np.empty(num_users, dtype=np.int64)
    for node, shard in enumerate(shards):
        node_of[shard] = node
    return node_of
