"""MovieLens: strict parsers on small files in each published format, id remapping, per-user split, users on nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_mosaic.data import MovieLensDataModule
from lightning_mosaic.data.movielens_files import (
    GENRES_100K,
    VARIANTS,
    MovieLensFormatError,
    assign_users_to_nodes,
    read_movies,
    read_ratings,
    remap_ids,
    split_per_user,
)

# ---- small files in the three formats

# (user, movie, rating, timestamp) rows; ids deliberately sparse and unsorted.
ROWS = [
    (7, 50, 4, 881250949),
    (3, 12, 5, 891717742),
    (7, 12, 1, 878887116),
    (20, 99, 3, 880606923),
    (3, 50, 2, 886397596),
    (20, 12, 4, 884182806),
    (3, 99, 3, 881171488),
    (7, 99, 5, 891628467),
    (20, 50, 1, 886324817),
    (3, 7, 4, 883603013),
]


def write_100k(directory: Path, rows=ROWS, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "u.data"
    path.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows) + extra, encoding="latin-1")
    return path


def write_1m(directory: Path, rows=ROWS, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ratings.dat"
    path.write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows) + extra, encoding="latin-1")
    return path


def write_latest(directory: Path, rows=ROWS, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ratings.csv"
    body = "".join(f"{u},{i},{r - 0.5 if u == 3 else float(r)},{t}\n" for u, i, r, t in rows)  # half stars for user 3
    path.write_text("userId,movieId,rating,timestamp\n" + body + extra, encoding="utf-8")
    return path


WRITERS = {"100k": write_100k, "1m": write_1m, "latest-small": write_latest}


@pytest.mark.parametrize("variant", list(WRITERS))
def test_each_format_is_read_in_file_order(tmp_path: Path, variant: str):
    path = WRITERS[variant](tmp_path)
    ratings = read_ratings(path, variant)
    assert len(ratings) == len(ROWS)
    assert ratings.users.tolist() == [r[0] for r in ROWS]
    assert ratings.items.tolist() == [r[1] for r in ROWS]
    assert ratings.timestamps.tolist() == [r[3] for r in ROWS]
    expected = [r[2] - (0.5 if variant == "latest-small" and r[0] == 3 else 0) for r in ROWS]
    assert ratings.ratings.tolist() == expected
    first_line = 2 if variant == "latest-small" else 1  # the CSV header is line 1
    assert ratings.lines.tolist() == list(range(first_line, first_line + len(ROWS)))


@pytest.mark.parametrize(
    ("variant", "bad_row", "message"),
    [
        ("100k", "5\t10\t3", r"3 fields; expected 4"),
        ("100k", "5\tten\t3\t881250949", r"movie id 'ten' is not an integer >= 1"),
        ("100k", "-5\t10\t3\t881250949", r"user id '-5' is not an integer >= 1"),
        ("100k", "5\t10\t3.5\t881250949", r"rating '3.5' is not on the 100k grid \(1\.\.5 in steps of 1\)"),
        ("100k", "5\t10\t6\t881250949", r"rating '6' is not on the 100k grid"),
        ("100k", "5\t10\t0\t881250949", r"rating '0' is not on the 100k grid"),
        ("100k", "5\t10\tgood\t881250949", r"rating 'good' is not a number"),
        ("100k", "5\t10\tnan\t881250949", r"rating 'nan' is not on the 100k grid"),
        ("100k", "5\t10\t3\tyesterday", r"timestamp 'yesterday' is not an integer >= 0"),
        ("100k", "", r"empty line"),
        ("100k", "3\t12\t4\t881250949", r"user 3 rates movie 12 a second time \(first at line 2\)"),
        ("1m", "5::10::3::881250949::x", r"5 fields; expected 4"),
        ("1m", "5\t10\t3\t881250949", r"1 fields; expected 4"),
        ("1m", "5::1.5::3::881250949", r"movie id '1.5' is not an integer"),
        ("latest-small", "5,10,3.25,881250949", r"rating '3.25' is not on the latest-small grid \(0.5\.\.5 in steps"),
        ("latest-small", "5,10,0.0,881250949", r"rating '0.0' is not on the latest-small grid"),
        ("latest-small", "5,10,5.5,881250949", r"rating '5.5' is not on the latest-small grid"),
    ],
)
def test_malformed_row_names_file_line_and_problem(tmp_path: Path, variant: str, bad_row: str, message: str):
    path = WRITERS[variant](tmp_path, extra=bad_row + "\n" + ("5\t11\t3\t1\n" if variant == "100k" else ""))
    line = len(ROWS) + 1 + (variant == "latest-small")
    with pytest.raises(MovieLensFormatError, match=rf"{path}, line {line}: {message}"):
        read_ratings(path, variant)


def test_malformed_row_stops_the_datamodule_before_any_work(tmp_path: Path):
    write_100k(tmp_path, extra="5\t10\t3\n")
    dm = MovieLensDataModule(tmp_path, num_nodes=2)
    with pytest.raises(MovieLensFormatError, match=r"u\.data, line 11: 3 fields"):
        dm.setup()


def test_csv_header_and_encoding_are_checked(tmp_path: Path):
    path = tmp_path / "ratings.csv"
    path.write_text("1,2,3.0,4\n")
    with pytest.raises(MovieLensFormatError, match=r"line 1: expected the header 'userId,movieId,rating,timestamp'"):
        read_ratings(path, "latest-small")
    path.write_bytes(b"userId,movieId,rating,timestamp\n1,2,3.0,4\n1,\xe9,3.0,4\n")
    with pytest.raises(MovieLensFormatError, match=r"line 3: not valid utf-8"):
        read_ratings(path, "latest-small")


def test_1m_movies_latin1_titles_and_genres(tmp_path: Path):
    path = tmp_path / "movies.dat"
    lines = [
        "1::Toy Story (1995)::Animation|Children's|Comedy",
        "52::Cité des enfants perdus, La (1995)::Adventure|Sci-Fi",
        "73::Misérables, Les (1995)::Drama|Musical",
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    movies = read_movies(path, "1m")
    assert movies.ids.tolist() == [1, 52, 73]
    assert movies.titles[1] == "Cité des enfants perdus, La (1995)" and movies.titles[2] == "Misérables, Les (1995)"
    assert movies.genre_names == ("Adventure", "Animation", "Children's", "Comedy", "Drama", "Musical", "Sci-Fi")
    assert movies.genres.sum(axis=1).tolist() == [3, 2, 2]
    assert movies.genres[1, movies.genre_names.index("Sci-Fi")]
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))  # Windows line endings read the same
    assert read_movies(path, "1m").genre_names == movies.genre_names
    path.write_bytes(path.read_bytes() + b"74::No genres\n")
    with pytest.raises(MovieLensFormatError, match=r"movies\.dat, line 4: 2 fields; expected 3"):
        read_movies(path, "1m")


def test_100k_item_flags_and_latest_csv_quotes(tmp_path: Path):
    flags = ["0"] * len(GENRES_100K)
    flags[GENRES_100K.index("Comedy")] = "1"
    item = tmp_path / "u.item"
    item.write_bytes(
        ("|".join(["5", "Copycat (1995)", "01-Jan-1995", "", "http://x", *flags]) + "\n").encode("latin-1")
    )
    movies = read_movies(item, "100k")
    assert movies.genre_names == GENRES_100K and movies.genres[0].tolist() == [f == "1" for f in flags]
    item.write_text(item.read_text().replace("|1|", "|2|"))
    with pytest.raises(MovieLensFormatError, match=r"u\.item, line 1: genre flags must be 0 or 1"):
        read_movies(item, "100k")
    csv_path = tmp_path / "movies.csv"
    csv_path.write_text('movieId,title,genres\n1,"American President, The (1995)",Comedy|Drama|Romance\n'
                        "2,Nothing (2001),(no genres listed)\n", encoding="utf-8")  # fmt: skip
    movies = read_movies(csv_path, "latest-small")
    assert movies.titles[0] == "American President, The (1995)"
    assert movies.genre_names == ("Comedy", "Drama", "Romance") and movies.genres.sum(axis=1).tolist() == [3, 0]


# ---- remapping, split, node assignment (pure functions)


def test_remap_is_sorted_contiguous_and_order_free():
    ids = np.array([30, 4, 30, 1000, 4, 7])
    index, originals = remap_ids(ids)
    assert originals.tolist() == [4, 7, 30, 1000]
    assert index.tolist() == [2, 0, 2, 3, 0, 1]
    assert np.array_equal(originals[index], ids)
    perm = np.random.default_rng(0).permutation(len(ids))
    index2, originals2 = remap_ids(ids[perm])
    assert np.array_equal(originals2, originals) and np.array_equal(index2, index[perm])


def test_split_per_user_properties():
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(50), rng.integers(1, 40, size=50))
    items = np.concatenate([rng.permutation(100)[: np.sum(users == u)] for u in range(50)])
    test = split_per_user(users, items, 0.2, seed=3)
    assert np.array_equal(test, split_per_user(users, items, 0.2, seed=3))  # reproducible
    assert not np.array_equal(test, split_per_user(users, items, 0.2, seed=4))
    for u in range(50):
        m, t = np.sum(users == u), np.sum(test[users == u])
        assert t == min(int(np.floor(0.2 * m + 0.5)), m - 1)  # at least one training rating per user
    perm = rng.permutation(len(users))  # row order does not matter
    assert np.array_equal(split_per_user(users[perm], items[perm], 0.2, seed=3), test[perm])
    with pytest.raises(ValueError, match="test_fraction"):
        split_per_user(users, items, 1.0, seed=0)


def test_assign_users_even_and_dirichlet():
    even = assign_users_to_nodes(103, 8, "iid", seed=0)
    sizes = np.bincount(even, minlength=8)
    assert sizes.sum() == 103 and sizes.max() - sizes.min() <= 1
    skewed = assign_users_to_nodes(1000, 8, 0.3, seed=0)
    skewed_sizes = np.bincount(skewed, minlength=8)
    assert skewed_sizes.min() >= 1 and skewed_sizes.std() > 5 * sizes.std()
    assert np.array_equal(skewed, assign_users_to_nodes(1000, 8, 0.3, seed=0))
    with pytest.raises(ValueError, match="min_users=1 is impossible with num_nodes=8"):
        assign_users_to_nodes(5, 8)


# ---- the datamodule on small files


@pytest.mark.parametrize("variant", list(WRITERS))
def test_datamodule_detects_each_layout(tmp_path: Path, variant: str):
    spec = VARIANTS[variant]
    WRITERS[variant](tmp_path / spec.folder)  # the archive's folder under data_dir
    dm = MovieLensDataModule(tmp_path, num_nodes=2, batch_size=2, test_fraction=0.34)
    dm.setup()
    assert dm.spec is spec and dm.source == tmp_path / spec.folder
    assert (dm.num_users, dm.num_items) == (3, 4)
    assert dm.user_ids.tolist() == [3, 7, 20] and dm.item_ids.tolist() == [7, 12, 50, 99]
    assert dm.rating_grid == (spec.rating_min, spec.rating_max, spec.rating_step)
    assert dm.num_classes == len(spec.grid)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 2, 2) and x.dtype == torch.int64 and y.shape == (2, 2) and y.dtype == torch.float32


def test_datamodule_is_identical_whatever_the_row_order(tmp_path: Path):
    write_100k(tmp_path / "a")
    write_100k(tmp_path / "b", rows=ROWS[::-1][3:] + ROWS[::-1][:3])
    a, b = (MovieLensDataModule(tmp_path / d, num_nodes=2, test_fraction=0.34, seed=5) for d in "ab")
    a.setup()
    b.setup()
    for split in ("train_dataset", "test_dataset"):
        assert torch.equal(getattr(a, split).pairs, getattr(b, split).pairs)
        assert torch.equal(getattr(a, split).ratings, getattr(b, split).ratings)
    assert all(np.array_equal(p, q) for p, q in zip(a.partition, b.partition, strict=True))


def test_datamodule_split_and_nodes_on_real_100k(movielens100k_dir: Path):
    dm = MovieLensDataModule(movielens100k_dir, num_nodes=16, seed=0)
    dm.setup()
    assert (dm.num_users, dm.num_items) == (943, 1682)
    train, test = dm.train_dataset, dm.test_dataset
    assert len(train) + len(test) == 100_000
    keys = lambda d: set((d.pairs[:, 0] * 10_000 + d.pairs[:, 1]).tolist())  # noqa: E731
    assert not keys(train) & keys(test) and len(keys(train) | keys(test)) == 100_000  # disjoint and complete
    assert set(train.pairs[:, 0].tolist()) == set(range(943))  # every user keeps training ratings
    # every user's training ratings live on exactly one node, users spread evenly
    owners = [set(train.pairs[torch.as_tensor(p), 0].tolist()) for p in dm.partition]
    assert sum(len(o) for o in owners) == 943 and set().union(*owners) == set(range(943))
    assert max(map(len, owners)) - min(map(len, owners)) <= 1
    assert np.array_equal(np.sort(np.concatenate(dm.partition)), np.arange(len(train)))
    assert dm.node_label_histogram().sum() == len(train)
    baseline = dm.global_mean_baseline()
    assert 3.4 < baseline["mean"] < 3.7 and 1.0 < baseline["rmse"] < 1.25
    genre = MovieLensDataModule(movielens100k_dir, num_nodes=16, node_split="genre", alpha=0.1, seed=0)
    genre.setup()
    sizes = [len(p) for p in genre.partition]
    assert min(sizes) >= 1 and max(sizes) > 3 * np.median(sizes)  # genre-skewed: a few nodes hold most users


def test_missing_data_lists_every_path(tmp_path: Path):
    dm = MovieLensDataModule(tmp_path, num_nodes=2)
    with pytest.raises(FileNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    for spec in VARIANTS.values():
        assert str(tmp_path / spec.ratings_file) in message
        assert str(tmp_path / spec.folder / spec.ratings_file) in message
    assert "download=False" in message


def test_download_uses_the_official_archive_and_reports_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, download_root, md5=None, remove_finished=False):
        calls.append((url, md5))
        write_1m(Path(download_root) / "ml-1m")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    dm = MovieLensDataModule(tmp_path / "new", num_nodes=2, variant="1m", download=True, test_fraction=0.34)
    dm.setup()
    assert calls == [("https://files.grouplens.org/datasets/movielens/ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906")]
    assert dm.num_users == 3

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError, match=r"download of .*ml-100k\.zip failed \(OSError: network is unreach"):
        MovieLensDataModule(tmp_path / "offline", num_nodes=2, download=True).prepare_data()
    assert not (tmp_path / "offline").exists()  # no empty folder left behind


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variant": "10m"}, "variant"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"node_split": "items"}, "node_split"),
        ({"min_users": 0}, "min_users"),
        ({"data_dir": ""}, "data_dir"),
        ({"num_nodes": 1}, "num_nodes"),
    ],
)
def test_arguments_are_checked_before_touching_disk(tmp_path: Path, kwargs: dict, match: str):
    args = {"data_dir": tmp_path / "nothing", "num_nodes": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        MovieLensDataModule(**args)


def test_base_arguments_are_forwarded_and_min_samples_is_refused(tmp_path: Path):
    dm = MovieLensDataModule(tmp_path, 3, 0.5, 64, variant="100k", seed=4, steps_per_epoch=7)
    assert (dm.num_nodes, dm.alpha, dm.batch_size, dm.seed, dm.steps_per_epoch) == (3, 0.5, 64, 4, 7)
    assert (dm.eval_batch_size, dm.min_samples) == (4096, 1)  # MovieLens's own defaults
    with pytest.raises(TypeError, match="min_users"):
        MovieLensDataModule(tmp_path, num_nodes=2, min_samples=3)


def test_impossible_user_split_names_min_users_and_users():
    """The partitioner's failure is reworded for users: the option is min_users, the items are users."""
    with pytest.raises(ValueError, match=r"min_users=5 is impossible with num_nodes=8 and only 20 users") as info:
        assign_users_to_nodes(20, 8, "iid", min_users=5)
    assert "min_samples" not in str(info.value)
    with pytest.raises(ValueError, match=r"could not give every node at least min_users=1 users with alpha=0\.01"):
        assign_users_to_nodes(20, 16, 0.01, seed=0)


def test_one_node_per_user_batches_are_gathered_and_equal_the_per_sample_path(movielens100k_dir: Path):
    """n = 943 on the real 100K (every node one user): the gathered batches are the per-sample path's, bit for bit,
    over several rounds (users with 16 training ratings wrap into new passes), two epochs and after a mid-epoch
    resume."""
    from lightning_mosaic.data import GatheredSamples, NodeBatchCollate, NodeBatchSampler, NodeDataLoader
    from tests.helpers import PerSample

    dm = MovieLensDataModule(movielens100k_dir, 943, "iid", 8, variant="100k", seed=0, steps_per_epoch=3)
    dm.setup("fit")
    assert sorted(dm.node_of_user.tolist()) == list(range(943))  # one user per node
    new = dm.train_dataloader()
    assert isinstance(new.dataset.__getitems__([0, 1]), GatheredSamples)
    old = NodeDataLoader(
        PerSample(dm.train_dataset),
        batch_sampler=NodeBatchSampler(dm.partition, 8, seed=0, num_batches=3),
        collate_fn=NodeBatchCollate(943),
    )

    def same(a, b):
        return len(a) == len(b) and all(u.dtype == v.dtype and torch.equal(u, v) for u, v in zip(a, b, strict=True))

    reference = []
    for epoch in range(2):
        new.batch_sampler.set_epoch(epoch)
        old.batch_sampler.set_epoch(epoch)
        reference = list(old)
        batches = list(new)
        assert len(batches) == 3 and all(same(a, b) for a, b in zip(batches, reference, strict=True))
    x, y = batches[0]
    assert x.shape == (943, 8, 2) and x.dtype == torch.int64 and y.shape == (943, 8) and y.dtype == torch.float32
    user_of_node = torch.from_numpy(np.argsort(dm.node_of_user))
    assert torch.equal(x[:, :, 0], user_of_node[:, None].expand(943, 8))  # every node's batch: its one user's ratings
    resumed = dm.train_dataloader()
    resumed.load_state_dict({"epoch": 1, "batches": 2})
    assert [same(a, b) for a, b in zip(resumed, reference[2:], strict=True)] == [True]
