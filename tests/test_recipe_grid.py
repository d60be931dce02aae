"""The recipe grid: every task x K x alpha is a task recipe plus two partial configs, stacked with ``--config``.

``mosaic fit --config <task recipe> --config gossip/<K> --config partition/<alpha>`` (shipped names, or their paths
``lightning_mosaic/recipes/<task>.yaml``, ``lightning_mosaic/configs/gossip/<K>.yaml``, ...): each piece sets one
value (``gossip.fragments``, ``data.init_args.alpha``) and later files override earlier ones key by key, so
everything else (the datamodule and its data_dir, batch size, ...; peers, topology, trainer) stays the recipe's.
Every combination is parsed by the real ``mosaic`` parser (no training); a few are instantiated.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_mosaic import MosaicGossip, MosaicModule
from lightning_mosaic.cli import MosaicCLI
from lightning_mosaic.data.base import NodeDataModule
from lightning_mosaic.recipes import CONFIGS_DIR, RECIPES_DIR

RECIPES = RECIPES_DIR
#: The base recipe of each task in the grid. MovieLens: genre-skewed nodes, where alpha means what it means for the
#: image tasks (movielens_mosaic.yaml spreads users evenly; a numeric alpha there only skews node sizes).
TASKS = {
    "digits": RECIPES / "quickstart.yaml",
    "cifar10": RECIPES / "cifar10_mosaic.yaml",
    "cifar100": RECIPES / "cifar100_mosaic.yaml",
    "movielens": RECIPES / "movielens_genre.yaml",
}
#: The K pieces of the grid (``el``, ``mosaic_k<K>``); the other gossip pieces set a fixed graph (``dpsgd_*``,
#: ``mosaic_k<K>_<graph>``: topology, peers, degree and K together), tested below.
GOSSIP_PIECES = [p for p in sorted((CONFIGS_DIR / "gossip").glob("*.yaml")) if re.fullmatch(r"el|mosaic_k\d+", p.stem)]
GRAPH_PIECES = [p for p in sorted((CONFIGS_DIR / "gossip").glob("*.yaml")) if p not in GOSSIP_PIECES]
PARTITION_PIECES = sorted((CONFIGS_DIR / "partition").glob("*.yaml"))
#: The only keys a gossip piece and a partition piece may change.
GRID_KEYS = {"gossip.fragments", "data.init_args.alpha"}


def fragments_of(piece: Path) -> int:
    """K named by a gossip piece's file name: ``el`` is 1, ``mosaic_k<K>`` is K."""
    if piece.stem == "el":
        return 1
    match = re.fullmatch(r"mosaic_k(\d+)", piece.stem)
    assert match, f"unexpected gossip piece name {piece.name}"
    return int(match.group(1))


def alpha_of(piece: Path) -> float | str:
    """alpha named by a partition piece's file name: ``iid`` or ``alpha_<float>``."""
    if piece.stem == "iid":
        return "iid"
    match = re.fullmatch(r"alpha_(\d+(?:\.\d+)?)", piece.stem)
    assert match, f"unexpected partition piece name {piece.name}"
    return float(match.group(1))


def leaves(namespace: Any) -> dict[str, Any]:
    """Every leaf of a parsed config as ``{dotted.key: value}`` (paths as strings), without the ``config`` list."""
    return {
        key: str(value) if isinstance(value, Path) or type(value).__name__.startswith("Path") else value
        for key, value in namespace.items(branches=False)
        if key != "config"
    }


def argv(*paths: Path) -> list[str]:
    return [arg for path in paths for arg in ("--config", str(path))]


@pytest.fixture(scope="module")
def cli() -> MosaicCLI:
    """The real CLI, fully instantiated from one composed combination (digits, K = 16, IID); its parser is reused."""
    gossip = CONFIGS_DIR / "gossip" / "mosaic_k16.yaml"
    partition = CONFIGS_DIR / "partition" / "iid.yaml"
    return MosaicCLI(
        MosaicModule,
        NodeDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=argv(TASKS["digits"], gossip, partition),
    )


@pytest.fixture(scope="module")
def recipe_values(cli: MosaicCLI) -> dict[str, dict[str, Any]]:
    """Every task recipe parsed alone, with the parser's defaults."""
    return {task: leaves(cli.parser.parse_args(argv(recipe))) for task, recipe in TASKS.items()}


@pytest.fixture(scope="module")
def recipe_settings(cli: MosaicCLI) -> dict[str, dict[str, Any]]:
    """Every task recipe parsed alone, without defaults: only the values its files set."""
    return {task: leaves(cli.parser.parse_args(argv(recipe), defaults=False)) for task, recipe in TASKS.items()}


def instantiate(parser: Any, config: Any) -> Any:
    """``parser.instantiate`` (jsonargparse >= 4.49; ``instantiate_classes`` before)."""
    return (getattr(parser, "instantiate", None) or parser.instantiate_classes)(config)


def test_the_pieces_are_the_documented_grid():
    assert [p.stem for p in GOSSIP_PIECES] == ["el", "mosaic_k16", "mosaic_k2", "mosaic_k4", "mosaic_k8"]
    assert [p.stem for p in PARTITION_PIECES] == ["alpha_0.1", "alpha_0.5", "iid"]
    for piece in GOSSIP_PIECES:  # one value each, equal to the one in the file's name
        assert yaml.safe_load(piece.read_text()) == {"gossip": {"fragments": fragments_of(piece)}}, piece.name
    for piece in PARTITION_PIECES:
        assert yaml.safe_load(piece.read_text()) == {"data": {"init_args": {"alpha": alpha_of(piece)}}}, piece.name


@pytest.mark.parametrize("partition", PARTITION_PIECES, ids=lambda p: p.stem)
@pytest.mark.parametrize("gossip", GOSSIP_PIECES, ids=lambda p: p.stem)
@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_k_alpha_combination_composes(cli, recipe_settings, task, gossip, partition):
    """Parsed without defaults (3x faster, and stricter): exactly the recipe's settings, K and alpha replaced."""
    values = leaves(cli.parser.parse_args(argv(TASKS[task], gossip, partition), defaults=False))
    assert values["gossip.fragments"] == fragments_of(gossip)
    assert values["data.init_args.alpha"] == alpha_of(partition)
    recipe = recipe_settings[task]
    assert values.keys() == recipe.keys()  # the partial pieces neither dropped nor added a setting
    changed = {key for key in recipe if values[key] != recipe[key]}
    assert changed <= GRID_KEYS, f"the pieces changed {sorted(changed - GRID_KEYS)}"
    assert values["data.class_path"] == recipe["data.class_path"]


def test_the_graph_pieces_set_only_gossip_keys_on_every_task(cli, recipe_settings):
    """``dpsgd_ring``, ``dpsgd_regular8``, ``mosaic_k8_ring``, ``mosaic_k8_regular8``: on every task recipe they
    change only gossip settings (the topology, s, K and the graph's degree), and each builds its MosaicGossip."""
    assert [p.stem for p in GRAPH_PIECES] == ["dpsgd_regular8", "dpsgd_ring", "mosaic_k8_regular8", "mosaic_k8_ring"]
    for piece in GRAPH_PIECES:
        gossip = yaml.safe_load(piece.read_text())["gossip"]
        assert set(gossip) <= {"topology", "peers", "fragments", "degree"}, piece.name
        for task, recipe in TASKS.items():
            values = leaves(cli.parser.parse_args(argv(recipe, piece), defaults=False))
            changed = {key for key in values if values[key] != recipe_settings[task].get(key)}
            assert changed <= {f"gossip.{key}" for key in gossip}, (piece.name, task, changed)
            assert all(values[f"gossip.{key}"] == value for key, value in gossip.items()), (piece.name, task)
        callback = MosaicGossip(**gossip)
        assert callback.topology in ("ring", "regular") and callback.fragments in (1, 8)


def test_a_partial_data_piece_keeps_every_other_data_setting(cli, recipe_values):
    """Stated explicitly: alpha 0.5 on CIFAR-10 keeps data_dir, batch size, test subset, n and seed."""
    values = leaves(cli.parser.parse_args(argv(TASKS["cifar10"], CONFIGS_DIR / "partition" / "alpha_0.5.yaml")))
    assert values["data.init_args.alpha"] == 0.5
    for key in ("class_path", "init_args.data_dir", "init_args.batch_size", "init_args.test_subset"):
        assert values[f"data.{key}"] == recipe_values["cifar10"][f"data.{key}"]
    assert values["data.init_args.data_dir"] == "data/cifar10" and values["data.init_args.batch_size"] == 8
    assert values["data.init_args.num_nodes"] == 16 and values["data.init_args.seed"] == 0


def test_pieces_given_before_the_recipe_are_overridden_by_it(cli, recipe_values):
    """Order matters: later files win, so the pieces go after the recipe (as documented)."""
    before = argv(CONFIGS_DIR / "gossip" / "mosaic_k2.yaml", CONFIGS_DIR / "partition" / "iid.yaml")
    values = leaves(cli.parser.parse_args(before + argv(TASKS["cifar10"])))
    assert values == recipe_values["cifar10"]  # K = 8 and alpha 0.1 from the recipe


def test_movielens_genre_is_movielens_mosaic_with_genre_skew(cli, recipe_values):
    """The grid's MovieLens base differs from movielens_mosaic.yaml only in the split, alpha, lr and run name."""
    users = leaves(cli.parser.parse_args(argv(RECIPES / "movielens_mosaic.yaml")))
    genre = recipe_values["movielens"]
    keys = users.keys() | genre.keys()
    assert {key: genre.get(key) for key in keys if genre.get(key) != users.get(key)} == {
        "trainer.logger.init_args.name": "movielens_genre",
        "data.init_args.node_split": "genre",
        "data.init_args.alpha": 0.1,
        "model.init_args.optimizer.init_args.lr": 2.0,
    }


def test_the_fixture_combination_instantiates(cli):
    (gossip,) = [c for c in cli.trainer.callbacks if isinstance(c, MosaicGossip)]
    assert gossip.fragments == 16 and gossip.peers == 3
    assert cli.datamodule.alpha == "iid" and cli.datamodule.batch_size == 16
    assert cli.model.num_nodes == cli.datamodule.num_nodes == 16


@pytest.mark.parametrize(
    ("task", "gossip", "partition"),
    [("cifar10", "el", "alpha_0.5"), ("cifar100", "mosaic_k2", "alpha_0.1"), ("movielens", "mosaic_k4", "alpha_0.5")],
)
def test_one_combination_per_task_instantiates(cli, recipe_values, task, gossip, partition):
    """The composed config builds its classes (constructors only: no data is read)."""
    gossip_piece = CONFIGS_DIR / "gossip" / f"{gossip}.yaml"
    partition_piece = CONFIGS_DIR / "partition" / f"{partition}.yaml"
    config = cli.parser.parse_args(argv(TASKS[task], gossip_piece, partition_piece))
    assert config.model.init_args.num_nodes == config.data.init_args.num_nodes == 16  # linked
    objects = instantiate(cli.parser, config)
    assert isinstance(objects.gossip, MosaicGossip) and objects.gossip.fragments == fragments_of(gossip_piece)
    assert isinstance(objects.data, NodeDataModule) and objects.data.alpha == alpha_of(partition_piece)
    assert type(objects.data).__name__ == recipe_values[task]["data.class_path"].rsplit(".", 1)[1]
    assert objects.data.batch_size == recipe_values[task]["data.init_args.batch_size"]
    assert objects.model.num_nodes == objects.data.num_nodes == 16
