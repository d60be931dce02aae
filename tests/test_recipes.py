"""The recipe hub: shipped recipes and pieces by name, ``mosaic recipes``, recipes built from the shared base, every
``mosaic ...`` hint in a YAML comment run as written, and the recipes in a built wheel."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_mosaic import recipes
from lightning_mosaic.cli import MosaicCLI, main
from lightning_mosaic.data.base import NodeDataModule
from lightning_mosaic.data.cifar100 import CIFAR100_CLASSES
from lightning_mosaic.module import MosaicModule
from lightning_mosaic.recipes import CONFIGS_DIR, RECIPES_DIR

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_YAML = sorted(RECIPES_DIR.glob("*.yaml")) + sorted(CONFIGS_DIR.rglob("*.yaml"))
#: The recipes `mosaic reproduce` runs, with their rounds (the grid's MovieLens base too).
REPRODUCED = {"quickstart": 300, "cifar10_mosaic": 600, "cifar100_mosaic": 600, "movielens_mosaic": 1000}
REPRODUCED["movielens_genre"] = 1000
#: The only trainer and gossip keys a recipe sets itself; everything else comes from configs/base.yaml.
RECIPE_OWN_KEYS = {
    "trainer.accelerator",
    "trainer.max_steps",
    "trainer.val_check_interval",
    "trainer.logger.init_args.name",
    "gossip.fragments",
}


def parse(*argv: str):
    cli = MosaicCLI(
        MosaicModule, NodeDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False, args=list(argv)
    )
    return cli


# -- names --------------------------------------------------------------------------------------------------------


def test_names_resolve_to_the_shipped_files_and_paths_are_kept(tmp_path, monkeypatch):
    assert recipes.resolve("quickstart") == RECIPES_DIR / "quickstart.yaml"
    assert recipes.resolve("gossip/el") == CONFIGS_DIR / "gossip" / "el.yaml"
    assert recipes.resolve("analysis/paper_fig2_fig3") == CONFIGS_DIR / "analysis" / "paper_fig2_fig3.yaml"
    assert recipes.resolve("base") == CONFIGS_DIR / "base.yaml"
    assert recipes.resolve("my/own.yaml") == Path("my/own.yaml")  # a path: its reader reports it if missing
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").write_text("seed_everything: 1\n")
    assert recipes.resolve("quickstart") == Path("quickstart")  # an existing file wins over the shipped name
    with pytest.raises(
        LookupError,
        match=r"quickstrat is no file and no shipped name; did you mean quickstart\? \(recipes: .*quickstart",
    ):
        recipes.resolve("quickstrat")


def test_expand_names_rewrites_config_model_and_data_values_only():
    argv = ["fit", "-c", "quickstart", "--config=gossip/el", "--model", "model/resnet8_cifar100"]
    argv += ["--data", "lightning_mosaic.data.DigitsDataModule", "--trainer.default_root_dir", "data/cifar10"]
    assert recipes.expand_names(argv) == [
        "fit",
        "-c",
        str(RECIPES_DIR / "quickstart.yaml"),
        f"--config={CONFIGS_DIR / 'gossip' / 'el.yaml'}",
        "--model",
        str(CONFIGS_DIR / "model" / "resnet8_cifar100.yaml"),
        "--data",
        "lightning_mosaic.data.DigitsDataModule",  # a class name, not a piece
        "--trainer.default_root_dir",
        "data/cifar10",  # not a --config value: never rewritten, although data/cifar10 is a piece
    ]


def test_an_unknown_name_is_one_line_listing_the_names_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "quickstrat"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mosaic: error: quickstrat is no file and no shipped name")
    assert "did you mean quickstart?" in err[0] and "`mosaic recipes` lists the pieces" in err[0]
    for name in ("quickstart", "cifar10_mosaic", "movielens_genre"):  # the recipes; the pieces: mosaic recipes
        assert name in err[0]
    assert list(tmp_path.iterdir()) == []


def test_mosaic_recipes_lists_names_descriptions_and_paths(capsys):
    main(["recipes"])
    out = capsys.readouterr().out
    for name, path in recipes.available().items():
        first_comment = path.read_text().splitlines()[0].lstrip("# ").strip()
        assert first_comment, f"{path.name} must start with a description"
        line = re.search(rf"^  {re.escape(name)} +(.*)$", out, flags=re.MULTILINE)
        assert line, name
        # the opening sentence, whole: it starts as the file's comment and ends with its full stop
        assert line.group(1).startswith(first_comment[:30]) and line.group(1).endswith("."), (name, line.group(1))
        assert f"  {path}\n" in out
    assert set(recipes.available()) >= {"quickstart", "cifar10_mosaic", "gossip/el", "analysis/paper_fig2_fig3"}
    main(["recipes", "quickstart", "gossip/el"])
    assert capsys.readouterr().out.splitlines() == [
        str(RECIPES_DIR / "quickstart.yaml"),
        str(CONFIGS_DIR / "gossip" / "el.yaml"),
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(["recipes", "nope"])
    assert exit_info.value.code == 2 and "nope is no file and no shipped name" in capsys.readouterr().err


def test_reproduce_takes_a_recipe_name(tmp_path, capsys):
    fits: list[list[str]] = []
    from lightning_mosaic.reproduction import grid

    argv = ["--task", "movielens", "--recipe", "movielens_genre", "--fragments", "1", "--seeds", "1"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grid, "write_report", lambda runs, out, *args: out / "report.md")
        grid.run_grid([*argv, "--out", str(tmp_path)], fit=fits.append)
    assert fits[0][:3] == ["fit", "--config", str(RECIPES_DIR / "movielens_genre.yaml")]
    with pytest.raises(SystemExit) as exit_info:
        grid.run_grid(["--task", "digits", "--recipe", "quickstrat", "--fragments", "1"], fit=fits.append)
    assert exit_info.value.code == 2 and "--recipe quickstrat is no file" in capsys.readouterr().err


# -- the recipes: composed from the base, validated often enough for curves ---------------------------------------


@pytest.mark.parametrize("recipe", sorted(RECIPES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_a_recipe_includes_the_base_and_sets_only_its_own_keys(recipe):
    """No recipe repeats the shared trainer and gossip settings: it includes a file and sets dotted keys after it."""
    text = yaml.safe_load(recipe.read_text())
    keys = list(text)
    assert keys[0] == "config" and text["config"] in ("../configs/base.yaml", "movielens_mosaic.yaml")
    assert "trainer" not in text and "gossip" not in text  # no inlined blocks
    own = {key for key in keys if key.startswith(("trainer.", "gossip."))}
    assert own <= RECIPE_OWN_KEYS, sorted(own - RECIPE_OWN_KEYS)
    assert isinstance(text.get("model", ""), str) and isinstance(text.get("data", ""), str)  # the shared pieces


@pytest.mark.parametrize(("recipe", "rounds"), sorted(REPRODUCED.items()))
def test_a_recipe_validates_20_times_or_more_and_at_its_last_round(recipe, rounds):
    config = parse("--config", str(recipes.resolve(recipe))).config
    trainer = config.trainer
    assert trainer.max_steps == rounds and trainer.check_val_every_n_epoch is None
    assert rounds // trainer.val_check_interval >= 20, trainer.val_check_interval
    assert rounds % trainer.val_check_interval == 0  # the last round is validated (and checkpointed)
    assert trainer.logger.init_args.name == recipe and config.gossip.fragments == 8 and config.gossip.peers == 3


def test_the_base_is_shared_and_a_recipe_changes_only_its_own_keys():
    """Parsed, a recipe is the base plus its own keys: nothing else in the trainer and gossip groups differs."""
    pieces = [
        "--model",
        str(CONFIGS_DIR / "model" / "mlp_digits.yaml"),
        "--data",
        str(CONFIGS_DIR / "data" / "digits.yaml"),
    ]
    base = parse("--config", str(CONFIGS_DIR / "base.yaml"), *pieces).config
    expected = {k: v for k, v in base.items() if k.startswith(("trainer.", "gossip."))}
    assert expected["gossip.peers"] == 3 and expected["trainer.logger.class_path"].endswith("CSVLogger")
    for recipe in REPRODUCED:
        values = parse("--config", str(recipes.resolve(recipe))).config
        changed = {k for k, v in expected.items() if values[k] != v}
        assert changed <= RECIPE_OWN_KEYS, (recipe, sorted(changed))


def test_every_name_in_the_docs_is_shipped():
    """Every ``--config``, ``--recipe`` and ``--model`` value in README.md and docs/*.md is a shipped name or a path
    written as a path (a loop variable, ``mine.yaml``, ``runs/.../config.yaml``)."""
    names = recipes.available()
    seen = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for option, value in re.findall(r"(--config|--recipe|--model)[ =]([^\s`'\"]+)", doc.read_text()):
            if "$" in value or not recipes.is_name(value) or value in ("NAME", "PATH"):
                continue
            if option == "--model" and "/" not in value:
                continue  # another program's option (benchmarks: --model mf)
            assert value in names, f"{doc.name}: {option} {value} is not a shipped name"
            seen.add(value)
    assert {"quickstart", "cifar10_mosaic", "gossip/el", "analysis/paper_fig2_fig3", "movielens_genre"} <= seen


# -- every `mosaic ...` hint in a YAML comment works as written ---------------------------------------------------


def comment_commands() -> list[tuple[str, str]]:
    """``(file:line, command)`` for every comment line of a shipped YAML that is a ``mosaic`` command."""
    found = []
    for path in SHIPPED_YAML:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = re.match(r"#\s+(mosaic\s+\S.*)$", line)
            if match:
                found.append((f"{path.relative_to(RECIPES_DIR.parent)}:{number}", match.group(1)))
    return found


COMMANDS = comment_commands()
#: Appended to every `mosaic fit` hint: two rounds, evaluation on two batches of 16 samples. (`limit_val_batches 1`
#: would be read as the float 1.0, which Lightning takes as 100% of the batches.)
FIT_SUFFIX = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "2", "--trainer.num_sanity_val_steps", "0"]
FIT_SUFFIX += ["--data.init_args.eval_batch_size", "16", "--trainer.enable_progress_bar", "false"]
#: Appended to the `mosaic analyze` hint: one system, K in {1, 2}, a handful of draws.
ANALYZE_SUFFIX = ["--systems", "[{curvature: equicorrelated, correlation: 0.5}]", "--fragments", "[1, 2]"]
ANALYZE_SUFFIX += ["--draws", "2", "--seeds", "2", "--rounds", "3", "--moment_draws", "20", "--workers", "1"]


def test_the_hints_are_found():
    assert len(COMMANDS) >= 15 and any("gossip/el" in command for _, command in COMMANDS)
    for where, command in COMMANDS:
        assert "recipes/" not in command and "configs/" not in command, where  # by name, so they work anywhere


@pytest.fixture(scope="module")
def cifar100_dir(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CIFAR-100 ImageFolder tree of real CIFAR-10 JPEGs relabelled into the 100 fine classes: 5 training and 20
    test images per class, so that the recipe's 2,000-image test subset exists."""
    sources = iter(sorted((cifar10_dir / "cifar10" / "train").glob("*/*.jpg"))[::19])
    root = tmp_path_factory.mktemp("cifar100")
    for split, per_class in (("train", 5), ("test", 20)):
        for name in CIFAR100_CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                shutil.copyfile(next(sources), root / split / name / f"{i:05d}.jpg")
    return root


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_every_hint_in_a_yaml_comment_runs_as_written(where, command, request, tmp_path, monkeypatch, capsys):
    argv = shlex.split(command, comments=True)[1:]  # without "mosaic" and a trailing "# ..." remark
    folders = {"/path/to/cifar10": "cifar10_dir", "/path/to/cifar100": "cifar100_dir"}
    folders["/path/to/ml-100k"] = "movielens100k_dir"
    argv = [str(request.getfixturevalue(folders[arg])) if arg in folders else arg for arg in argv]
    monkeypatch.chdir(tmp_path)
    if argv[0] == "analyze":
        main([*argv, *ANALYZE_SUFFIX])
        assert (tmp_path / "analysis" / "fig2_spectra.png").stat().st_size > 1000
        return
    assert argv[0] == "fit", where
    main([*argv, *FIT_SUFFIX])
    (summary_path,) = tmp_path.glob("runs/*/version_0/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["rounds"] == 2
    pieces = [recipes.resolve(value) for option, value in zip(argv, argv[1:]) if option == "--config"]
    gossip = [yaml.safe_load(p.read_text())["gossip"]["fragments"] for p in pieces if p.parent.name == "gossip"]
    if "--gossip.fragments" in argv:  # an override after the pieces wins
        gossip.append(int(argv[argv.index("--gossip.fragments") + 1]))
    assert summary["fragments"] == (gossip[-1] if gossip else 8)
    assert summary_path.parts[-3] == yaml.safe_load(pieces[0].read_text())["trainer.logger.init_args.name"]
    if "--model" in argv:  # a model piece states its parameter count in its first comment line
        model = recipes.available()[argv[argv.index("--model") + 1]]
        stated = re.search(r"([\d,]+) parameters", model.read_text().splitlines()[0])
        assert stated and summary["parameters_per_node"] == int(stated.group(1).replace(",", ""))


# -- the recipes ship in the wheel --------------------------------------------------------------------------------


def test_a_built_wheel_runs_the_quickstart_by_name_from_an_empty_folder(tmp_path):
    """Build the wheel from a copy of the sources, install it alone, run the quickstart by name: the wheel ran."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "lightning_mosaic", source / "lightning_mosaic", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, source / name)
    wheels, target, empty = tmp_path / "wheels", tmp_path / "target", tmp_path / "empty"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run([*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(wheels)], check=True)
    (wheel,) = wheels.glob("lightning_mosaic-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    empty.mkdir()
    code = (
        "import sys, lightning_mosaic; print('imported', lightning_mosaic.__file__, flush=True); "
        "from lightning_mosaic.cli import main; sys.argv[0] = 'mosaic'; main()"
    )
    command = [sys.executable, "-c", code, "fit", "--config", "quickstart", "--trainer.max_steps", "3"]
    command += ["--trainer.enable_progress_bar", "false"]
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    result = subprocess.run(command, cwd=empty, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = Path(result.stdout.split("imported ", 1)[1].split()[0])
    assert imported.is_relative_to(target)  # the wheel's copy ran, not the checkout's
    assert (target / "lightning_mosaic" / "recipes" / "quickstart.yaml").is_file()
    (summary,) = empty.glob("runs/quickstart/version_0/summary.json")
    assert json.loads(summary.read_text())["rounds"] == 3
