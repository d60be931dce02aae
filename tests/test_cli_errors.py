"""What the ``mosaic`` command shows: one-line parser errors with did-you-mean, the subcommand list, plain help,
no Lightning adverts or LeafSpec noise, and ``mosaic reproduce`` without LightningCLI's "args parameter" warning.

The subprocess tests run the real entry point from an empty folder (each costs the import time, a few seconds).
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_mosaic.cli import SUBCOMMANDS, MosaicCLI, main
from lightning_mosaic.recipes import CONFIGS_DIR, RECIPES_DIR

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(RECIPES_DIR / "quickstart.yaml")


def mosaic(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m lightning_mosaic.cli ARGS`` in ``cwd``, importing this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("MOSAIC_TRACEBACK", None)
    command = [sys.executable, "-m", "lightning_mosaic.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def recipe_copy(folder: Path, old: str, new: str) -> Path:
    """The quickstart recipe with ``old`` replaced by ``new``, its config pieces found from ``folder``."""
    text = Path(QUICKSTART).read_text().replace("../configs", str(CONFIGS_DIR))
    assert old in text
    path = folder / "recipe.yaml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown option", ["unrecognized arguments: --gossip.fragmnets 4", "did you mean --gossip.fragments?"]),
        ("missing config", ["config: File does not exist", "nowhere.yaml"]),
        ("wrong type in YAML", ["gossip.fragments: expected int, got 'eight'", "(reading "]),
        ("wrong type on the command line", ["gossip.fragments: expected int, got 'eight'"]),
        ("malformed YAML", ["recipe.yaml: not valid YAML: ", "line 13"]),
        ("unknown key in YAML", ["gossip.pears: not an option of mosaic fit", "did you mean gossip.peers?"]),
        ("unknown subcommand", ["unknown subcommand 'fitt'", "did you mean fit?"]),
    ],
)
def test_a_parser_error_is_one_line_with_a_hint_and_writes_nothing(tmp_path, case, expected):
    config = tmp_path / "config"
    config.mkdir()
    bad_yaml = {
        "wrong type in YAML": ("fragments: 8", "fragments: eight"),
        "malformed YAML": ("gossip.fragments: 8", "gossip.fragments: [8"),
        "unknown key in YAML": ("gossip.fragments: 8", "gossip.fragments: 8\ngossip.pears: 2"),
    }
    args = {
        "unknown option": ["fit", "--config", QUICKSTART, "--gossip.fragmnets", "4"],
        "missing config": ["fit", "--config", "nowhere.yaml"],
        "wrong type on the command line": ["fit", "--config", QUICKSTART, "--gossip.fragments", "eight"],
        "unknown subcommand": ["fitt", "--config", QUICKSTART],
    }.get(case) or ["fit", "--config", str(recipe_copy(config, *bad_yaml[case]))]
    run = tmp_path / "run"
    run.mkdir()
    result = mosaic(args, cwd=run)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr  # the error and where to look, no usage block
    assert lines[0].startswith("mosaic: error: ")
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert lines[1] == ("see: mosaic --help" if case == "unknown subcommand" else "see: mosaic fit --help")
    assert result.stdout == ""
    assert list(run.iterdir()) == []  # no run folder, no config, no log


def test_help_lists_every_subcommand(tmp_path):
    result = mosaic(["--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert listed == ["fit", "validate", "test", "predict", "reproduce", "analyze", "recipes"]
    assert result.stderr == "" and list(tmp_path.iterdir()) == []


def test_no_arguments_or_h_list_the_subcommands(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "  reproduce  " in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["-h"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in SUBCOMMANDS)


def test_the_subcommand_table_matches_lightning_and_its_entry_points_import():
    lightning = [name for name, (_, entry) in SUBCOMMANDS.items() if entry is None]
    assert lightning == list(MosaicCLI.subcommands())
    for name, (summary, entry) in SUBCOMMANDS.items():
        assert summary and "\n" not in summary
        if entry is not None:
            module, _, function = entry.partition(":")
            assert callable(getattr(importlib.import_module(module), function)), name


def test_cli_and_grid_depend_one_way():
    """``reproduction/grid.py`` imports the CLI; ``cli.py`` imports nothing of ``lightning_mosaic.reproduction``."""

    def imported(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        names = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        return names | {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}

    assert not [name for name in imported(ROOT / "lightning_mosaic" / "cli.py") if "reproduction" in name]
    assert "lightning_mosaic.cli" in imported(ROOT / "lightning_mosaic" / "reproduction" / "grid.py")


@pytest.mark.parametrize(
    ("override", "line", "hint"),
    [
        (
            ["--model.init_args.sead", "3"],
            "model.init_args.sead: not an option of lightning_mosaic.MosaicModule; did you mean "
            "--model.init_args.seed?",
            "see: mosaic fit --model.help lightning_mosaic.MosaicModule",
        ),
        (
            ["--trainer.logger.init_args.nam", "x"],
            "trainer.logger.init_args.nam: not an option of lightning.pytorch.loggers.CSVLogger; did you mean "
            "--trainer.logger.init_args.name?",
            "see: mosaic fit --trainer.logger.help lightning.pytorch.loggers.CSVLogger",
        ),
        (
            ["--model.init_args.execution", "fast"],
            "model.init_args.execution: expected one of 'auto', 'vmap', 'loop', got 'fast'",
            "see: mosaic fit --model.help lightning_mosaic.MosaicModule",
        ),
        (
            ["--data", "lightning_mosaic.data.Nope"],
            "data: lightning_mosaic.data.Nope: module 'lightning_mosaic.data' has no attribute 'Nope'",
            "see: mosaic fit --help",
        ),
    ],
)
def test_errors_in_class_arguments_name_the_key_and_the_class(tmp_path, capsys, monkeypatch, override, line, hint):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", QUICKSTART, *override])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"mosaic: error: {line}", hint]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        (["--trainer.devices", "0"], "`Trainer(devices='0')` value is not a valid input using cpu accelerator"),
        (["--trainer.accelerator", "nope"], "nope"),
    ],
)
def test_a_trainer_misconfiguration_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, override, reason):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", QUICKSTART, *override])
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("mosaic: error: ") and reason in err[0], err
    assert len(err) == 2 and "Traceback" not in "\n".join(err)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_init_argument_in_yaml_gets_the_key_form(tmp_path, capsys):
    extra = tmp_path / "seed.yaml"
    extra.write_text("model:\n  init_args:\n    sead: 1\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", QUICKSTART, "--config", str(extra)])
    first = capsys.readouterr().err.splitlines()[0]
    reason = "model.init_args.sead: not an option of lightning_mosaic.MosaicModule; did you mean model.init_args.seed?"
    assert first == f"mosaic: error: {reason} (reading {extra})"


def test_help_is_plain_text_and_lists_only_this_packages_models(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--help"])
    assert info.value.code == 0
    fit_help = capsys.readouterr().out
    assert "--gossip.fragments" in fit_help and "--trainer.max_steps" in fit_help
    for markup in (":class:", ":func:", ":meth:", ":ref:", "``", "`"):
        assert markup not in fit_help, markup
    with pytest.raises(SystemExit):
        main(["fit", "--model.help", "lightning_mosaic.MosaicModule"])
    model_help = capsys.readouterr().out
    assert len(model_help.splitlines()) < 200  # 978 lines with every torch.nn class listed
    assert "lightning_mosaic.models.MLP" in model_help and "lightning_mosaic.models.GNLeNet" in model_help
    assert "torch.nn.Linear" not in model_help and "torchmetrics.Accuracy" not in model_help
    assert "more: any importable class path works" in model_help
    assert "torch.optim.Adam," in model_help  # a short list (optimizers) stays whole


def test_a_run_shows_no_adverts_nor_leafspec_but_real_warnings(tmp_path):
    args = ["fit", "--config", QUICKSTART, "--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false"]
    result = mosaic([*args, "--trainer.log_every_n_steps", "100"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "Tip:" not in output and "litlogger" not in output and "litmodels" not in output
    assert "LeafSpec" not in output
    assert "GPU available: False" in result.stderr  # the same logger's other messages pass
    assert "is smaller than the logging interval Trainer(log_every_n_steps=100)" in result.stderr  # a real warning
    assert "Mosaic Learning summary" in result.stdout


def test_analyze_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as info:
        main(["analyze", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: mosaic analyze" in out and "--systems" in out
    for markup in ("``", ":class:", ":func:", ":meth:"):
        assert markup not in out, markup


def test_a_non_coordinate_wise_optimizer_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", QUICKSTART, "--model.init_args.optimizer", "torch.optim.LBFGS"])
    assert info.value.code == 2
    assert "optimizer LBFGS is not coordinate-wise" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused when the module is built: no run folder, no config.yaml
