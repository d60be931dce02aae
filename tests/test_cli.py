"""The ``mosaic`` CLI: every shipped YAML parses and instantiates; the quickstart learns and writes its summary."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_mosaic import MosaicFaults, MosaicGossip, MosaicModule
from lightning_mosaic.cli import MosaicCLI, main
from lightning_mosaic.data.base import NodeDataModule
from lightning_mosaic.recipes import CONFIGS_DIR, RECIPES_DIR

RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))
MODEL_PIECES = sorted((CONFIGS_DIR / "model").glob("*.yaml"))
DATA_PIECES = sorted((CONFIGS_DIR / "data").glob("*.yaml"))
QUICKSTART = RECIPES_DIR / "quickstart.yaml"


def instantiate(args: list[str]) -> MosaicCLI:
    return MosaicCLI(
        MosaicModule, NodeDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False, args=args
    )


def test_shipped_yaml_exists():
    assert {p.stem for p in RECIPES} == {
        "quickstart",
        "cifar10_mosaic",
        "cifar100_mosaic",
        "movielens_mosaic",
        "movielens_genre",
    }  # EL is a recipe with the gossip/el piece: --config cifar10_mosaic --config gossip/el
    assert MODEL_PIECES and DATA_PIECES


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_and_instantiates(recipe):
    cli = instantiate(["--config", str(recipe)])
    assert isinstance(cli.model, MosaicModule)
    assert isinstance(cli.datamodule, NodeDataModule)
    assert cli.model.num_nodes == cli.datamodule.num_nodes  # linked
    gossip = [c for c in cli.trainer.callbacks if isinstance(c, MosaicGossip)]
    assert len(gossip) == 1 and gossip[0].peers >= 1
    faults = [c for c in cli.trainer.callbacks if isinstance(c, MosaicFaults)]
    assert len(faults) == 1 and not faults[0].active  # no recipe needs the faults group: no fault by default


@pytest.mark.parametrize("piece", MODEL_PIECES + DATA_PIECES, ids=lambda p: p.parent.name + "/" + p.name)
def test_every_config_piece_parses(piece):
    group = piece.parent.name
    args = {"model": str(MODEL_PIECES[0]), "data": str(CONFIGS_DIR / "data" / "digits.yaml")}
    args[group] = str(piece)
    argv = [x for key, value in args.items() for x in (f"--{key}", value)]
    cli = instantiate(argv)
    assert isinstance(cli.model, MosaicModule)


def test_unknown_key_and_bad_value_are_refused(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    text = QUICKSTART.read_text().replace("../configs", str(CONFIGS_DIR))
    bad.write_text(text.replace("gossip.fragments: 8", "gossip.fragments: 8\ngossip.pears: 2"))
    with pytest.raises(SystemExit):
        instantiate(["--config", str(bad)])
    assert "pears" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        instantiate(["--config", str(QUICKSTART), "--gossip.fragments", "many"])
    assert "fragments" in capsys.readouterr().err


def test_override_reaches_the_callback():
    cli = instantiate(["--config", str(QUICKSTART), "--gossip.fragments", "1"])
    (gossip,) = [c for c in cli.trainer.callbacks if isinstance(c, MosaicGossip)]
    assert gossip.fragments == 1


def test_fault_options_are_the_faults_group(capsys):
    quickstart = ["--config", str(QUICKSTART)]
    cli = instantiate(quickstart + ["--faults.availability", "0.9", "--faults.straggler_prob", "0.1"])
    (faults,) = [c for c in cli.trainer.callbacks if isinstance(c, MosaicFaults)]
    assert (faults.availability, faults.churn_trace, faults.straggler_prob, faults.seed) == (0.9, None, 0.1, 0)
    with pytest.raises(SystemExit):
        instantiate(quickstart + ["--gossip.availability", "0.9"])  # not a gossip setting
    assert "availability" in capsys.readouterr().err


def test_a_run_with_faults_logs_offline_nodes_and_resumes(tmp_path, capsys):
    base = ["fit", "--config", str(QUICKSTART), "--trainer.enable_progress_bar", "false"]
    base += ["--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.log_every_n_steps", "1"]
    base += ["--faults.availability", "0.8", "--faults.straggler_prob", "0.1", "--faults.seed", "2"]
    main(base + ["--trainer.max_steps", "10"])  # the recipe validates, and so checkpoints, every 10 rounds
    header = (tmp_path / "quickstart" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "gossip/offline_nodes" in header.split(",")
    (ckpt,) = (tmp_path / "quickstart").glob("version_0/checkpoints/*.ckpt")
    main(base + ["--trainer.max_steps", "12", "--ckpt_path", str(ckpt)])
    summary = json.loads((tmp_path / "quickstart" / "version_1" / "summary.json").read_text())
    assert summary["rounds"] == 12
    assert summary["faults"] == {"availability": 0.8, "churn_trace": None, "straggler_prob": 0.1, "seed": 2}
    with pytest.raises(SystemExit) as exit_info:  # other fault settings: refused, naming the difference
        main(base + ["--trainer.max_steps", "12", "--ckpt_path", str(ckpt), "--faults.seed", "3"])
    assert exit_info.value.code == 2
    assert "other fault settings (MosaicFaults), so it cannot continue this one: seed=2 in the checkpoint, 3 here" in (
        capsys.readouterr().err
    )


def test_quickstart_learns_and_writes_its_summary(tmp_path, capsys):
    """The README's main job, end to end: node accuracy >= 0.85 on digits, table printed, JSON written."""
    main(
        [
            "fit",
            "--config",
            str(QUICKSTART),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert "node accuracy mean" in out and "values sent per node per round" in out
    (summary_path,) = tmp_path.glob("quickstart/version_*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["rounds"] == 300 and summary["nodes"] == 16 and summary["fragments"] == 8
    assert summary["node_acc_mean"] >= 0.85
    assert summary["avg_model_acc"] >= 0.85
    assert summary["values_sent_per_node_per_round"] == 3 * summary["parameters_per_node"]
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--gossip.peers", "40"], "peers (s) must be an integer in [1, 15]"),
        (["--gossip.fragments", "5000"], "fragments (K) must be at most the number of parameters d = 4810"),
        (
            ["--gossip.topology", "el-oracle", "--gossip.peers", "3", "--data.init_args.num_nodes", "15"],
            "topology='el-oracle' needs n * s even",
        ),
        (["--data.init_args.min_samples", "200"], "min_samples=200 is impossible"),
        (["--data.init_args.num_nodes", "1"], "num_nodes must be an integer >= 2, got 1"),
        (["--data.init_args.alpha", "0"], "alpha must be a float > 0"),
        (["--faults.availability", "1.5"], "availability must be a probability in [0, 1], got 1.5"),
        (["--faults.straggler_prob", "-1"], "straggler_prob must be a probability in [0, 1], got -1"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, override, message):
    argv = ["fit", "--config", str(QUICKSTART)]
    argv += ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.default_root_dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + override)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"mosaic: error: {message}" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no run folder, no config, no checkpoint


def test_a_bad_churn_trace_is_one_line_and_writes_nothing(tmp_path, capsys):
    trace = tmp_path / "trace" / "trace.csv"
    trace.parent.mkdir()
    trace.write_text("node,first_round,last_round\n99,1,3\n")
    argv = ["fit", "--config", str(QUICKSTART), "--faults.churn_trace", str(trace)]
    argv += ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.default_root_dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"mosaic: error: {trace}:2: node must be in [0, 16), got 99" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace"]  # no run folder, no config, no checkpoint


def test_yaml_model_is_initialized_from_the_module_seed_not_the_global_rng():
    """The replicas built from YAML equal those built in Python with the same seed, whatever the global RNG did."""
    import torch

    from lightning_mosaic.models import MLP

    torch.manual_seed(12345)  # a different global state must not matter
    cli = instantiate(["--config", str(QUICKSTART), "--seed_everything", "7"])
    python = MosaicModule(MLP, 16, seed=0)
    assert torch.equal(cli.model.gossip_parameters, python.gossip_parameters)


def test_resume_from_the_command_line_and_truncated_checkpoint(tmp_path, capsys):
    base = ["fit", "--config", str(QUICKSTART), "--trainer.enable_progress_bar", "false"]
    base += ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    main(base + ["--trainer.max_steps", "60"])
    (ckpt,) = (tmp_path / "runs").glob("quickstart/version_0/checkpoints/*.ckpt")
    # the config, not the checkpoint's hyperparameters, is the source of truth (execution is not in the checkpoint)
    main(base + ["--trainer.max_steps", "80", "--ckpt_path", str(ckpt), "--model.init_args.execution", "loop"])
    (summary,) = (tmp_path / "runs").glob("quickstart/version_1/summary.json")
    assert json.loads(summary.read_text())["rounds"] == 80  # the gossip round counter came back with the state
    (resumed,) = (tmp_path / "runs").glob("quickstart/version_1/checkpoints/*.ckpt")
    assert torch.load(resumed, weights_only=True)["hyper_parameters"]["execution"] == "loop"
    assert f"ckpt_path: {ckpt}" in (tmp_path / "runs" / "quickstart" / "version_1" / "config.yaml").read_text()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:50_000])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(base + ["--ckpt_path", str(truncated)])
    assert exit_info.value.code == 2
    assert f"mosaic: error: ckpt_path {truncated} is truncated or not a PyTorch checkpoint" in capsys.readouterr().err


#: Arguments every built-in datamodule takes from NodeDataModule through ``**kwargs`` (MovieLens has min_users).
BASE_DATA_ARGS = ("num_nodes", "alpha", "batch_size", "seed", "eval_batch_size", "test_subset", "num_workers")


@pytest.mark.parametrize(
    ("datamodule", "own"),
    [
        ("DigitsDataModule", ("test_fraction", "min_samples")),
        ("CIFAR10DataModule", ("data_dir", "download", "augment", "cache_dir", "min_samples")),
        ("CIFAR100DataModule", ("data_dir", "download", "augment", "cache_dir", "min_samples")),
        ("MovieLensDataModule", ("data_dir", "variant", "node_split", "min_users", "test_fraction")),
    ],
)
def test_data_help_lists_the_base_arguments_forwarded_by_kwargs(datamodule, own, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--data.help", f"lightning_mosaic.data.{datamodule}"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in BASE_DATA_ARGS + own:
        assert f"--data.{name} " in out, name
    assert "Per-node training mini-batch size" in out and "Number of nodes n >= 2. (required" in out
    assert "DataLoader worker processes, >= 0" in out  # the base's docs (as plain text), not a re-listed copy
    assert ("--data.min_samples" in out) == (datamodule != "MovieLensDataModule")
    assert "--data.args" not in out and "--data.kwargs" not in out


def test_predict_runs_every_node_and_the_averaged_model_on_the_shared_test_set(tmp_path):
    """``mosaic predict`` works for a recipe: the node datamodules predict on their shared test set."""
    cli = instantiate(["--config", str(QUICKSTART), "--trainer.logger.init_args.save_dir", str(tmp_path)])
    predictions = cli.trainer.predict(cli.model, datamodule=cli.datamodule)
    test_size = len(cli.datamodule.test_dataset)
    assert sum(p["avg_model"].shape[0] for p in predictions) == test_size
    for batch in predictions:
        assert batch["nodes"].shape == (16, batch["avg_model"].shape[0], 10)  # (n, B, classes)
