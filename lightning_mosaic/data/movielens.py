"""MovieLens ratings for decentralized matrix factorization: every user's ratings live on exactly one node."""

from __future__ import annotations

import logging
import math
import time
from numbers import Real
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from lightning_mosaic._validation import check_int
from lightning_mosaic.data.base import NodeDataModule
from lightning_mosaic.data.download import download_into
from lightning_mosaic.data.gather import TensorRowsDataset
from lightning_mosaic.data.movielens_files import (
    VARIANTS,
    MovieLensVariant,
    assign_users_to_nodes,
    dominant_genre,
    read_movies,
    read_ratings,
    remap_ids,
    split_per_user,
)

__all__ = ["MovieLensDataModule", "RatingsDataset"]

log = logging.getLogger(__name__)

Variant = Literal["auto", "100k", "1m", "latest-small"]
NodeSplit = Literal["users", "genre"]


class RatingsDataset(TensorRowsDataset):
    """(user, item) pairs and their ratings, held in memory.

    Items are ``(x, y)``: ``x`` int64 ``(2,)`` = (user index, item index), ``y`` float32 scalar rating in stars.
    A batch is fetched with one gather per tensor (:class:`~lightning_mosaic.data.TensorRowsDataset`): collated,
    ``x`` is ``(B, 2)`` and ``y`` ``(B,)``.

    Args:
        pairs: int64 ``(N, 2)``.
        ratings: float32 ``(N,)``.

    Raises:
        ValueError: Shapes or dtypes differ from the above.
    """

    def __init__(self, pairs: Tensor, ratings: Tensor) -> None:
        if pairs.dtype != torch.int64 or pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ValueError(f"pairs must be int64 of shape (N, 2); got {pairs.dtype} {tuple(pairs.shape)}")
        if ratings.shape != (pairs.shape[0],) or not ratings.is_floating_point():
            raise ValueError(f"ratings must be float of shape ({pairs.shape[0]},); got {tuple(ratings.shape)}")
        super().__init__(pairs, ratings)

    @property
    def pairs(self) -> Tensor:
        """(user index, item index) of every rating, int64 ``(N, 2)``."""
        return self.tensors[0]

    @property
    def ratings(self) -> Tensor:
        """Every rating in stars, float ``(N,)``."""
        return self.tensors[1]


def _ratings_of(dataset: Dataset) -> Tensor:
    """The ratings ``(N,)`` of a :class:`RatingsDataset` or of a ``Subset`` of one."""
    if isinstance(dataset, Subset):
        return _ratings_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.int64)]
    assert isinstance(dataset, RatingsDataset)
    return dataset.ratings


class MovieLensDataModule(NodeDataModule):
    """Node-partitioned MovieLens ratings (100K, 1M or latest-small) for matrix factorization.

    Pipeline (every step seeded, none depends on the row order of the files):

    1. Read the ratings file strictly (:func:`~lightning_mosaic.data.movielens_files.read_ratings`: a malformed
       row raises naming the file and line).
    2. Remap user and movie ids to contiguous 0-based indices in increasing id order (943 x 1682 for 100K,
       6040 x 3706 for 1M, 610 x 9724 for latest-small).
    3. Split each user's ratings into train and test (``test_fraction`` of them, at least one training rating per
       user; :func:`~lightning_mosaic.data.movielens_files.split_per_user`).
    4. Assign users to nodes: all of a user's training ratings go to one node
       (:func:`~lightning_mosaic.data.movielens_files.assign_users_to_nodes`). ``node_split="users"`` with
       ``alpha="iid"`` (default) spreads users evenly; a finite ``alpha`` draws Dirichlet node sizes.
       ``node_split="genre"`` labels every user with their most rated genre (from the movies file) and applies the
       per-genre Dirichlet split with ``alpha``: genre-skewed nodes.

    The test set is every user's held-out ratings, shared by all nodes (the paper's node-level metrics evaluate each
    node's model on the whole test set). Training labels (``train_labels``, ``node_label_histogram``) are rating
    levels: index of the rating on the grid (``num_classes`` levels: 5 for 100K/1M, 10 for latest-small).

    Where the files are: ``data_dir`` itself holding a ratings file (``u.data``, ``ratings.dat``, ``ratings.csv``),
    or its sub-folder named like the official archive (``ml-100k``, ``ml-1m``, ``ml-latest-small``). With
    ``variant="auto"`` the first found in that order is used. With ``download=True`` and nothing found, the official
    GroupLens archive of ``variant`` (100K for ``"auto"``) is downloaded into ``data_dir`` and extracted there
    (``torchvision.datasets.utils.download_and_extract_archive``, MD5-checked for 100K and 1M).

    Batches: training ``x`` int64 ``(n, B, 2)`` (user, item), ``y`` float32 ``(n, B)`` ratings in stars; evaluation
    ``x`` ``(B_eval, 2)``, ``y`` ``(B_eval,)``.

    Args:
        data_dir: Directory to look in (and download to).
        num_nodes: Number of nodes ``n >= 2``.
        alpha: Dirichlet concentration of the user-to-node split, ``> 0``; ``"iid"`` (default) for an even split.
        *args: The next positional argument of :class:`~lightning_mosaic.data.NodeDataModule` (``batch_size``,
            per-node mini-batch size in ratings).
        variant: ``"auto"``, ``"100k"``, ``"1m"`` or ``"latest-small"``.
        download: Download the official archive when no files are found.
        test_fraction: Fraction of each user's ratings held out for testing, in ``(0, 1)``.
        node_split: ``"users"`` (node sizes from ``alpha``) or ``"genre"`` (genre-skewed, needs the movies file).
        min_users: Minimum number of users per node, ``>= 1`` (instead of the base's ``min_samples``).
        eval_batch_size: Batch size of the validation and test loaders.
        **kwargs: The other arguments of :class:`~lightning_mosaic.data.NodeDataModule` (``batch_size``,
            ``seed``, ``test_subset``, ``num_workers``, ``steps_per_epoch``; ``seed`` also seeds the per-user
            split and the user assignment, ``test_subset`` counts ratings).

    Raises:
        TypeError: ``min_samples`` is given (use ``min_users``).
        ValueError: An argument is out of range (at construction); at :meth:`setup`, a malformed file
            (:class:`~lightning_mosaic.data.movielens_files.MovieLensFormatError`, naming file and line), a movie
            without an entry in the movies file (``node_split="genre"``), or too few users for the nodes.
        FileNotFoundError: At :meth:`prepare_data` / :meth:`setup`: no ratings file found and downloading is off or
            failed; the message lists every path looked for.

    Example:
        >>> dm = MovieLensDataModule("data/ml-100k", num_nodes=16)  # doctest: +SKIP
        >>> dm.setup(); dm.num_users, dm.num_items  # doctest: +SKIP
        (943, 1682)
    """

    num_classes = 5
    input_shape = (2,)

    def __init__(
        self,
        data_dir: str | Path,
        num_nodes: int,
        alpha: float | str = "iid",
        *args: Any,
        variant: Variant = "auto",
        download: bool = False,
        test_fraction: float = 0.2,
        node_split: NodeSplit = "users",
        min_users: int = 1,
        eval_batch_size: int = 4096,
        **kwargs: Any,
    ) -> None:
        if "min_samples" in kwargs:
            raise TypeError(
                f"MovieLensDataModule assigns whole users to nodes: use min_users (users per node) instead of "
                f"min_samples={kwargs['min_samples']!r}"
            )
        # num_nodes and alpha are restated to keep their positions while alpha gets another default and meaning.
        super().__init__(num_nodes, alpha, *args, min_samples=1, eval_batch_size=eval_batch_size, **kwargs)
        if not isinstance(data_dir, (str, Path)) or str(data_dir) == "":
            raise ValueError(f"data_dir must be a non-empty path (str or Path); got {data_dir!r}")
        if variant != "auto" and variant not in VARIANTS:
            raise ValueError(f"variant must be 'auto' or one of {', '.join(map(repr, VARIANTS))}; got {variant!r}")
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, Real) or not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be a number in (0, 1); got {test_fraction!r}")
        if node_split not in ("users", "genre"):
            raise ValueError(f"node_split must be 'users' or 'genre'; got {node_split!r}")
        self.data_dir = Path(data_dir).expanduser()
        self.variant = variant
        self.download = bool(download)
        self.test_fraction = float(test_fraction)
        self.node_split = node_split
        self.min_users = check_int("min_users", min_users, 1)
        if variant != "auto":
            self.num_classes = len(VARIANTS[variant].grid)
        #: The release read (set by :meth:`setup`).
        self.spec: MovieLensVariant | None = None
        #: Folder the files were read from (set by :meth:`setup`).
        self.source: Path | None = None
        self._user_ids: np.ndarray | None = None
        self._item_ids: np.ndarray | None = None
        self._node_of_user: np.ndarray | None = None
        self._train_users: np.ndarray | None = None

    # ------------------------------------------------------------------ locating the data
    def _specs(self) -> list[MovieLensVariant]:
        return list(VARIANTS.values()) if self.variant == "auto" else [VARIANTS[self.variant]]

    def _candidates(self) -> list[tuple[MovieLensVariant, Path]]:
        specs = self._specs()
        return [(s, self.data_dir / s.ratings_file) for s in specs] + [
            (s, self.data_dir / s.folder / s.ratings_file) for s in specs
        ]

    def _find(self) -> tuple[MovieLensVariant, Path] | None:
        return next(((spec, path.parent) for spec, path in self._candidates() if path.is_file()), None)

    def _looked_for(self) -> str:
        return "\n".join(f"  - {path}  (MovieLens {spec.name})" for spec, path in self._candidates())

    def _locate(self) -> tuple[MovieLensVariant, Path]:
        found = self._find()
        if found is not None:
            return found
        if not self.download:
            raise FileNotFoundError(
                f"MovieLens not found under {self.data_dir}. Looked for:\n{self._looked_for()}\n"
                "Downloading is off (download=False): pass download=True to fetch the official GroupLens archive, "
                "or point data_dir at an extracted one."
            )
        spec = VARIANTS["100k" if self.variant == "auto" else self.variant]

        def fetch(folder: Path) -> None:
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(spec.url, download_root=str(folder), md5=spec.md5, remove_finished=True)

        try:
            download_into(self.data_dir, fetch)  # nothing is written under data_dir unless the download completes
        except Exception as exc:
            raise FileNotFoundError(
                f"MovieLens not found under {self.data_dir} and the download of {spec.url} failed "
                f"({type(exc).__name__}: {exc}). Looked for:\n{self._looked_for()}"
            ) from exc
        found = self._find()
        if found is None:
            raise FileNotFoundError(
                f"the download of {spec.url} succeeded but no ratings file appeared. Looked for:\n{self._looked_for()}"
            )
        return found

    def prepare_data(self) -> None:
        """Download the official archive if no files exist and ``download=True`` (runs on one process).

        Raises:
            FileNotFoundError: No ratings file found and downloading is off or failed.
        """
        self._locate()

    # ------------------------------------------------------------------ loading
    def _load(self) -> tuple[Dataset, np.ndarray, Dataset]:
        spec, root = self._locate()
        start = time.perf_counter()
        raw = read_ratings(root / spec.ratings_file, spec)
        users, user_ids = remap_ids(raw.users)
        items, item_ids = remap_ids(raw.items)
        order = np.lexsort((items, users))  # canonical (user, item) order: the file's row order never matters
        users, items, ratings = users[order], items[order], raw.ratings[order]
        test = split_per_user(users, items, self.test_fraction, self.seed)
        labels = np.rint((ratings - spec.rating_min) / spec.rating_step).astype(np.int64)

        user_labels = None
        if self.node_split == "genre":
            movies = read_movies(root / spec.movies_file, spec)
            row_of = {int(m): k for k, m in enumerate(movies.ids)}
            missing = [int(m) for m in item_ids if int(m) not in row_of]
            if missing:
                raise ValueError(
                    f"{len(missing)} rated movies (ids {missing[:5]}) have no entry in {root / spec.movies_file}; "
                    "node_split='genre' needs every rated movie's genres"
                )
            item_genres = movies.genres[[row_of[int(m)] for m in item_ids]]
            user_labels = dominant_genre(users[~test], items[~test], item_genres, len(user_ids))
        self._node_of_user = assign_users_to_nodes(
            len(user_ids), self.num_nodes, self.alpha, seed=self.seed, user_labels=user_labels, min_users=self.min_users
        )

        self.spec, self.source = spec, root
        self.num_classes = len(spec.grid)
        self._user_ids, self._item_ids = user_ids, item_ids
        self._train_users = users[~test]
        pairs = torch.from_numpy(np.stack([users, items], axis=1))
        values = torch.from_numpy(ratings.astype(np.float32))
        train_index, test_index = torch.from_numpy(np.flatnonzero(~test)), torch.from_numpy(np.flatnonzero(test))
        log.info(
            "MovieLens %s loaded from %s: %d users x %d movies, %d train / %d test ratings in %.1f s",
            spec.name,
            root,
            len(user_ids),
            len(item_ids),
            len(train_index),
            len(test_index),
            time.perf_counter() - start,
        )
        train = RatingsDataset(pairs[train_index], values[train_index])
        test_set = RatingsDataset(pairs[test_index], values[test_index])
        return train, labels[~test], test_set

    def _partition_train(self, labels: np.ndarray) -> list[np.ndarray]:
        """Training ratings of node i = every training rating of the users assigned to node i."""
        assert self._node_of_user is not None and self._train_users is not None
        node_of_rating = self._node_of_user[self._train_users]
        return [np.flatnonzero(node_of_rating == node).astype(np.int64) for node in range(self.num_nodes)]

    # ------------------------------------------------------------------ properties
    @property
    def num_users(self) -> int:
        """Number of users ``U`` (after :meth:`setup`)."""
        self._require_setup("num_users")
        assert self._user_ids is not None
        return len(self._user_ids)

    @property
    def num_items(self) -> int:
        """Number of distinct rated movies ``I`` (after :meth:`setup`)."""
        self._require_setup("num_items")
        assert self._item_ids is not None
        return len(self._item_ids)

    @property
    def user_ids(self) -> np.ndarray:
        """Original user id of every user index, int64 ``(U,)`` ascending (after :meth:`setup`)."""
        self._require_setup("user_ids")
        assert self._user_ids is not None
        return self._user_ids

    @property
    def item_ids(self) -> np.ndarray:
        """Original movie id of every item index, int64 ``(I,)`` ascending (after :meth:`setup`)."""
        self._require_setup("item_ids")
        assert self._item_ids is not None
        return self._item_ids

    @property
    def node_of_user(self) -> np.ndarray:
        """Node of every user index, int64 ``(U,)`` (after :meth:`setup`)."""
        self._require_setup("node_of_user")
        assert self._node_of_user is not None
        return self._node_of_user

    @property
    def rating_grid(self) -> tuple[float, float, float]:
        """``(min, max, step)`` of the ratings in stars, e.g. ``(1.0, 5.0, 1.0)`` (after :meth:`setup`)."""
        self._require_setup("rating_grid")
        assert self.spec is not None
        return self.spec.rating_min, self.spec.rating_max, self.spec.rating_step

    def global_mean_baseline(self) -> dict[str, float]:
        """Scores of the constant predictor ``mean of the training ratings`` on the test set.

        The rating accuracy rounds the mean to the grid (as :class:`~lightning_mosaic.tasks.RatingModule` does).

        Returns:
            ``{"mean", "rmse", "mae", "rating_acc"}`` in stars (accuracy in ``[0, 1]``).

        Raises:
            RuntimeError: Called before :meth:`setup`.
        """
        lo, hi, step = self.rating_grid
        truth = _ratings_of(self.test_dataset).to(torch.float64)
        mean = float(_ratings_of(self.train_dataset).to(torch.float64).mean())
        rounded = min(max(lo + step * round((mean - lo) / step), lo), hi)
        return {
            "mean": mean,
            "rmse": math.sqrt(float(((truth - mean) ** 2).mean())),
            "mae": float((truth - mean).abs().mean()),
            "rating_acc": float((truth == rounded).to(torch.float64).mean()),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(data_dir={str(self.data_dir)!r}, num_nodes={self.num_nodes}, "
            f"alpha={self.alpha!r}, variant={self.variant!r}, node_split={self.node_split!r}, seed={self.seed})"
        )
