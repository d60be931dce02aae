"""``mosaic reproduce``: a real (tiny) grid over K and seeds on digits, the report, and resuming the grid."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
import warnings

import pytest
import yaml

import lightning_mosaic.reproduction.grid as grid
from lightning_mosaic import MosaicFaults, MosaicModule
from lightning_mosaic.cli import MosaicCLI, main
from lightning_mosaic.data import DigitsDataModule
from lightning_mosaic.data.base import NodeDataModule
from lightning_mosaic.models import MLP
from lightning_mosaic.reproduction.report import format_metric, plot_curves, write_report

RUNS = [(k, seed) for k in (1, 4) for seed in (0, 1)]


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """One real grid (K in {1, 4}, 2 seeds, 10 rounds, validation every 5) shared by the tests of this module.

    Run as the console script runs it (``sys.argv`` holds the command line); the warnings it raised are returned.
    """
    out = tmp_path_factory.mktemp("reproduce") / "report"
    argv = ["reproduce", "--task", "digits", "--fragments", "1", "4", "--seeds", "2", "--rounds", "10"]
    argv += ["--out", str(out), "--", "--data.init_args.steps_per_epoch", "5", "--trainer.val_check_interval", "5"]
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        patch.setattr(sys, "argv", ["mosaic", *argv])
        warnings.simplefilter("always")
        main()
    return out, argv, list(caught)


def _run_dir(out, k, seed):
    return out / "runs" / f"K{k}-seed{seed}" / "version_0"


def _table(report: str, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table after ``heading`` (header and rule rows left out)."""
    section = report.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[2:]]


def test_reproduce_runs_the_grid_writes_the_report_and_resumes(grid_run, capsys):
    out, argv, caught = grid_run
    # each fit parses its own command line: LightningCLI has no reason to warn about args and sys.argv both given
    assert not [w for w in caught if "args parameter is intended" in str(w.message)]
    report = (out / "report.md").read_text()
    assert "| 1 (EL) |" in report and "| 4 |" in report and "node_acc_mean − EL" in report
    for name in ("node_acc_mean", "avg_model_acc", "consensus_distance", "node_acc_std"):
        assert (out / f"{name}.png").stat().st_size > 1000
    rows = list(csv.DictReader((out / "curves.csv").open()))
    validation = {(r["fragments"], r["round"]) for r in rows if r["metric"] == "val/node_acc_mean"}
    assert validation == {(k, r) for k in ("1", "4") for r in ("5", "10")}  # every 5 rounds (val_check_interval)
    assert all(r["seeds"] == "2" and float(r["std"]) >= 0 for r in rows)
    # logged by the gossip every 10 rounds and by every validation
    assert {r["round"] for r in rows if r["metric"] == "gossip/consensus_distance"} == {"5", "10"}
    assert not list(out.rglob("*.tmp*"))

    # each run's folder records its mosaic fit arguments, written before the run started (atomically)
    recorded = json.loads((out / "runs" / "K4-seed1" / grid.ARGS_FILE).read_text())
    assert recorded[:1] == ["fit"] and "--ckpt_path" not in recorded
    assert recorded[recorded.index("--trainer.max_steps") + 1] == "10" and recorded[-2:] == argv[-2:]

    # an interrupted grid: one run lost its summary (as if killed after its last checkpoint) -> it resumes
    (out / "runs" / "K4-seed1" / "version_0" / "summary.json").unlink()
    capsys.readouterr()
    main(argv)
    printed = capsys.readouterr().out
    assert printed.count("done, skipped") == 3 and "K4-seed1 resumes from epoch=1-step=10.ckpt" in printed
    assert (out / "runs" / "K4-seed1" / "version_0" / "summary.json").is_file()
    assert json.loads((out / "runs" / "K4-seed1" / grid.ARGS_FILE).read_text()) == recorded  # --ckpt_path not kept


def test_reproduce_refuses_bad_arguments(tmp_path, capsys):
    """One line naming the option, the value and what is allowed (did-you-mean), one hint line, exit 2, no write."""
    out = tmp_path / "out"
    expected = {
        ("--task", "digts"): "argument --task: invalid choice: 'digts' (choose from 'cifar10', 'cifar100', 'digits', "
        "'movielens'); did you mean --task digits?",
        ("--fragmnets", "1"): "unrecognized arguments: --fragmnets; did you mean --fragments?",
        ("--fragments", "0"): "argument --fragments: must be an integer >= 1, got '0'",
        ("--rounds", "abc"): "argument --rounds: must be an integer >= 1, got 'abc'",
        ("--alpha", "-1"): "argument --alpha: must be a float > 0 or 'iid' (an IID split; also 'inf'), got '-1'",
        ("--alpha", "dirichlet"): "argument --alpha: must be a float > 0 or 'iid' (an IID split; also 'inf'), "
        "got 'dirichlet'",
    }
    for (option, value), line in expected.items():
        argv = {"--task": "digits", "--fragments": "1", "--out": str(out)} | {option: value}
        with pytest.raises(SystemExit) as exit_info:
            main(["reproduce", *[word for pair in argv.items() for word in pair]])
        captured = capsys.readouterr()
        assert exit_info.value.code == 2 and captured.out == ""
        assert captured.err == f"mosaic reproduce: error: {line}\nsee: mosaic reproduce --help\n"
    assert not out.exists()
    for alpha in ("0.1", "iid", "inf"):  # accepted as given
        assert grid.build_parser().parse_args(["--task", "digits", "--fragments", "1", "--alpha", alpha]).alpha == alpha


def test_reproduce_refuses_a_grid_that_changes_a_recorded_run(tmp_path, monkeypatch, capsys):
    """A run's folder records its mosaic fit arguments; another list for it stops the grid before any run starts."""
    fits = []
    monkeypatch.setattr(grid, "write_report", lambda runs, out, *args: out / "report.md")
    argv = ["--task", "digits", "--seeds", "1", "--out", str(tmp_path)]
    grid.run_grid([*argv, "--fragments", "4", "--rounds", "20"], fit=fits.append)
    record = tmp_path / "runs" / "K4-seed0" / grid.ARGS_FILE
    assert json.loads(record.read_text()) == fits[0] and not list(tmp_path.rglob("*.tmp"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # K1-seed0 comes first, but K4-seed0 is checked before it runs
        grid.run_grid([*argv, "--fragments", "1", "4", "--rounds", "30"], fit=fits.append)
    assert exit_info.value.code == 2 and len(fits) == 1 and not (tmp_path / "runs" / "K1-seed0").exists()
    assert capsys.readouterr().err == (
        "mosaic reproduce: error: run K4-seed0 was started with --trainer.max_steps 20, this grid gives it "
        f"--trainer.max_steps 30 (first difference of its mosaic fit arguments, recorded in {record}); use another "
        f"--out for the new settings, or delete {record.parent} to run it again\n"
    )
    with pytest.raises(SystemExit):  # an argument added after -- is a difference too
        grid.run_grid([*argv, "--fragments", "4", "--rounds", "20", "--", "--trainer.max_time", "1"], fit=fits.append)
    assert "started with (nothing), this grid gives it --trainer.max_time 1 " in capsys.readouterr().err
    grid.run_grid([*argv, "--fragments", "4", "--rounds", "20"], fit=fits.append)  # the same list: it runs
    assert len(fits) == 2 and fits[1] == fits[0]
    record.unlink()  # a folder of an older version, without the record: accepted as is
    grid.run_grid([*argv, "--fragments", "4", "--rounds", "30"], fit=fits.append)
    assert len(fits) == 3 and "30" in fits[2]


def test_reproduce_passes_fault_options_and_seeds_them_per_run(tmp_path, monkeypatch):
    """``-- --faults.availability 0.9`` reaches every run's MosaicFaults, whose seed is the run's seed."""
    fits = []
    monkeypatch.setattr(grid, "write_report", lambda runs, out, *args: out / "report.md")
    argv = ["--task", "digits", "--fragments", "2", "--seeds", "2", "--out", str(tmp_path)]
    grid.run_grid([*argv, "--", "--faults.availability", "0.9"], fit=fits.append)  # record each run's arguments
    assert len(fits) == 2
    for seed, fit in enumerate(fits):
        options = dict(subclass_mode_model=True, subclass_mode_data=True, run=False)
        cli = MosaicCLI(MosaicModule, NodeDataModule, args=fit[1:], **options)
        (faults,) = [c for c in cli.trainer.callbacks if isinstance(c, MosaicFaults)]
        assert (faults.availability, faults.seed) == (0.9, seed)


def test_report_states_the_setup_read_from_every_run(grid_run):
    """n, s, alpha, rounds, batch size, lr, test-set size (...) in report.md are the values every run recorded."""
    out, *_ = grid_run
    report = (out / "report.md").read_text()
    setup = dict(_table(report, "## Setup"))
    configs = [yaml.safe_load((_run_dir(out, k, s) / "config.yaml").read_text()) for k, s in RUNS]
    summaries = [json.loads((_run_dir(out, k, s) / "summary.json").read_text()) for k, s in RUNS]
    config, summary = configs[0], summaries[0]
    data, optimizer = config["data"]["init_args"], config["model"]["init_args"]["optimizer"]
    # the runs agree on everything but K and the seeds, so one value per setting
    for key in ("num_nodes", "alpha", "batch_size", "test_subset"):
        assert {c["data"]["init_args"][key] for c in configs} == {data[key]}
    assert {c["gossip"]["peers"] for c in configs} == {config["gossip"]["peers"]}
    assert setup["nodes (n)"] == str(data["num_nodes"]) == "16"
    assert setup["peers (s)"] == str(config["gossip"]["peers"]) == "3"
    assert setup["Dirichlet alpha"] == str(data["alpha"]) == "0.1"
    assert setup["rounds"] == str(config["trainer"]["max_steps"]) == str(summary["rounds"]) == "10"
    assert setup["batch size"] == f"{data['batch_size']} examples per node per local step"
    assert setup["learning rate"] == f"{optimizer['init_args']['lr']}, constant (no LR scheduler)"
    assert setup["optimizer"].startswith(optimizer["class_path"] + " (momentum 0.0")
    assert setup["fragments (K)"].startswith("1, 4 ") and setup["seeds"].startswith("0, 1; ")
    assert setup["topology"].startswith("el-local, random fragmentation")
    # the test set, counted by MosaicSummary in the last validation, is the datamodule's whole test split
    datamodule = DigitsDataModule(num_nodes=16, alpha=0.1, seed=0)
    datamodule.setup("fit")
    test_size = len(datamodule.test_dataset)
    assert {s["eval_examples"] for s in summaries} == {test_size} and test_size > 300
    assert setup["test set"].startswith(f"{test_size} examples per evaluation")
    d = sum(p.numel() for p in MLP(in_features=64, num_classes=10, hidden=[64]).parameters())
    assert setup["model"].startswith("lightning_mosaic.models.MLP(in_features=64, num_classes=10, hidden=[64])")
    assert setup["model"].endswith(f"d = {d:,} parameters per node") and d == summary["parameters_per_node"]
    assert setup["data"] == "lightning_mosaic.data.DigitsDataModule, no data folder (not an argument)"
    assert setup["validation"] == (
        "every 5 rounds (rounds 5, 10); trainer.check_val_every_n_epoch null, trainer.val_check_interval 5, "
        "data.init_args.steps_per_epoch 5"
    )
    assert setup["final metrics"] == "from the validation after local step 10 (of 10)"
    assert setup["fault model"].startswith("none ")
    assert "differs between runs" not in report
    assert "besides K and the seeds:\nnone (" in report


def test_report_writes_every_number_in_one_format(grid_run):
    """Every cell of the final-metrics table has its metric kind's one format, and the values are the runs'."""
    out, *_ = grid_run
    rows = _table((out / "report.md").read_text(), "## Final metrics")
    assert [row[0] for row in rows] == ["1 (EL)", "4"]
    percent = r"\d{1,3}\.\d{2}% ± \d{1,3}\.\d{2}%"
    points = r"[+-]?\d{1,3}\.\d{2} pp ± \d{1,3}\.\d{2} pp"  # differences of accuracies: percentage points
    scientific = r"\d\.\d{2}e[+-]\d{2} ± \d\.\d{2}e[+-]\d{2}"
    formats = [percent, percent, percent, scientific, points, points]
    for row in rows:
        assert len(row) == 1 + len(formats)
        for cell, pattern in zip(row[1:], formats):
            assert re.fullmatch(pattern, cell) or (row[0] == "1 (EL)" and pattern == points and cell == "—"), cell
    summaries = {(k, s): json.loads((_run_dir(out, k, s) / "summary.json").read_text()) for k, s in RUNS}
    for row, k in zip(rows, (1, 4)):
        mean = sum(summaries[(k, s)]["node_acc_mean"] for s in (0, 1)) / 2
        assert row[1].startswith(f"{100 * mean:.2f}% ± ")
    assert format_metric(0.951234, "error", 0.01) == "0.9512 ± 0.0100"
    assert format_metric(None, "error") == "—" and format_metric(-0.0123, "accuracy", signed=True) == "-1.23 pp"
    assert format_metric(0.0203, "accuracy", 0.0022, signed=True) == "+2.03 pp ± 0.22 pp"
    assert "differences in percentage points" in (out / "report.md").read_text()


def test_report_names_the_values_that_differ_between_runs(grid_run, tmp_path):
    """A run with another batch size and lr is named in those setup rows and in the list of differences."""
    out, *_ = grid_run
    runs = {}
    for k, seed in RUNS:
        runs[(k, seed)] = tmp_path / "runs" / f"K{k}-seed{seed}"
        shutil.copytree(_run_dir(out, k, seed), runs[(k, seed)], ignore=shutil.ignore_patterns("checkpoints"))
    config_file, summary_file = runs[(4, 1)] / "config.yaml", runs[(4, 1)] / "summary.json"
    config, summary = yaml.safe_load(config_file.read_text()), json.loads(summary_file.read_text())
    config["data"]["init_args"]["batch_size"] = 32
    config["model"]["init_args"]["optimizer"]["init_args"]["lr"] = summary["optimizer"]["lr"] = 0.2
    config_file.write_text(yaml.safe_dump(config))
    summary_file.write_text(json.dumps(summary))
    report = write_report(runs, tmp_path / "out", "classification", "title", "command").read_text()
    setup = dict(_table(report, "## Setup"))
    others = "(K1-seed0, K1-seed1, K4-seed0)"
    assert setup["batch size"] == (
        f"differs between runs: 16 examples per node per local step {others}; "
        "32 examples per node per local step (K4-seed1)"
    )
    assert setup["learning rate"] == (
        f"differs between runs: 0.1, constant (no LR scheduler) {others}; 0.2, constant (no LR scheduler) (K4-seed1)"
    )
    assert f"- `data.init_args.batch_size`: differs between runs: 16 {others}; 32 (K4-seed1)" in report
    assert f"- `model.init_args.optimizer.init_args.lr`: differs between runs: 0.1 {others}; 0.2 (K4-seed1)" in report
    assert setup["nodes (n)"] == "16" and "none (their" not in report  # the rest: still one value

    (runs[(1, 0)] / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match=r"run K1-seed0 has no config.yaml in .*K1-seed0"):
        write_report(runs, tmp_path / "out2", "classification", "title", "command")
    assert not (tmp_path / "out2").exists()


def test_plot_curves_keeps_coinciding_curves_apart():
    """Three identical curves are drawn as three lines with their own line style, marker and width, and a legend."""
    rounds = list(range(5, 305, 5))
    means = [1 - 1 / r for r in rounds]
    figure = plot_curves({k: (rounds, means, [0.01] * len(rounds)) for k in (1, 4, 16)}, "accuracy", "title")
    (axes,) = figure.axes
    lines = axes.get_lines()
    assert [line.get_label() for line in lines] == ["EL (K = 1)", "Mosaic K = 4", "Mosaic K = 16"]
    assert all(list(line.get_ydata()) == means for line in lines)  # they do coincide
    assert len({line.get_linestyle() for line in lines}) == 3
    assert len({line.get_marker() for line in lines}) == 3 and all(line.get_marker() != "None" for line in lines)
    assert len({line.get_linewidth() for line in lines}) == 3
    assert all(line.get_markerfacecolor() == "none" for line in lines)  # hollow: nested markers stay visible
    assert len({line.get_color() for line in lines}) == 3
    assert [text.get_text() for text in axes.get_legend().get_texts()] == [
        "EL (K = 1)",
        "Mosaic K = 4",
        "Mosaic K = 16",
    ]
    # a grid of 8 values of K: still a marker of its own per K
    figure = plot_curves({k: (rounds, means, None) for k in range(1, 9)}, "accuracy", "title")
    assert len({line.get_marker() for line in figure.axes[0].get_lines()}) == 8
    import matplotlib.pyplot as plt  # after plot_curves chose its backend

    plt.close("all")


def test_report_puts_the_end_of_fit_validation_at_the_last_round(tmp_path, capsys):
    """7 rounds, validation every 5: the end-of-fit validation (logged at step 7) is round 7, and the report says so.

    With n = 2 and s = 1 the consensus distance is exactly 0 after every round; 3 rounds: only the end validation.
    """
    out = tmp_path / "report"
    argv = ["reproduce", "--task", "digits", "--fragments", "1", "--seeds", "1", "--nodes", "2", "--peers", "1"]
    forwarded = ["--", "--data.init_args.steps_per_epoch", "5", "--trainer.val_check_interval", "5"]
    main([*argv, "--rounds", "7", "--out", str(out), *forwarded])
    rows = list(csv.DictReader((out / "curves.csv").open()))
    assert {r["round"] for r in rows if r["metric"] == "val/node_acc_mean"} == {"5", "7"}
    assert {r["round"] for r in rows} == {"5", "7"}  # nothing past the run's 7 rounds
    assert {float(r["mean"]) for r in rows if r["metric"] == "gossip/consensus_distance"} == {0.0}
    report = (out / "report.md").read_text()
    setup = dict(_table(report, "## Setup"))
    assert setup["validation"].startswith("at round 5 and at the end (round 7); ")
    assert setup["final metrics"] == "from the validation at the end (round 7), after local step 7 (of 7)"

    # the grid again with other rounds in the same folder: refused, nothing run or rewritten
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--rounds", "8", "--out", str(out), *forwarded])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "run K1-seed0 was started with --trainer.max_steps 7, this grid gives it --trainer.max_steps 8" in err
    assert (out / "report.md").read_text() == report

    out = tmp_path / "short"
    main([*argv, "--rounds", "3", "--out", str(out), *forwarded])
    setup = dict(_table((out / "report.md").read_text(), "## Setup"))
    assert setup["validation"].startswith("at the end only (round 3); ")
    assert setup["final metrics"] == "from the validation at the end (round 3), after local step 3 (of 3)"
    assert {r["round"] for r in csv.DictReader((out / "curves.csv").open())} == {"3"}


def test_plot_curves_draws_a_log_curve_with_zeros_on_a_linear_axis():
    """A log-scale curve holding a 0 (consensus distance with n = 2, s = 1) is drawn on a linear axis, said so."""
    figure = plot_curves({1: ([5, 10], [0.0, 0.0], None), 4: ([5, 10], [0.0, 0.0], None)}, "distance", "t", True)
    (axes,) = figure.axes
    assert axes.get_yscale() == "linear" and axes.get_ylabel() == "distance (linear scale: some values are 0)"
    assert [list(line.get_ydata()) for line in axes.get_lines()] == [[0.0, 0.0], [0.0, 0.0]]
    figure = plot_curves({1: ([5, 10], [0.1, 0.01], None)}, "distance", "t", True)
    assert figure.axes[0].get_yscale() == "log" and figure.axes[0].get_ylabel() == "distance"
    import matplotlib.pyplot as plt

    plt.close("all")


def test_reproduce_runs_a_topology_grid_and_names_its_folder(tmp_path, monkeypatch, capsys):
    """``--topology ring --peers all`` reaches every run's MosaicGossip (D-PSGD); ``--graph`` needs ``--topology
    file``; the default folder names the graph and s, so D-PSGD and EL on one graph do not share runs."""
    fits = []
    monkeypatch.setattr(grid, "write_report", lambda runs, out, *args: out / "report.md")
    monkeypatch.chdir(tmp_path)
    grid.run_grid(["--task", "digits", "--fragments", "1", "--seeds", "1", "--topology", "ring", "--peers", "all"],
                  fit=fits.append)  # fmt: skip
    grid.run_grid(["--task", "digits", "--fragments", "8", "--seeds", "1", "--topology", "regular", "--degree", "8",
                   "--peers", "3"], fit=fits.append)  # fmt: skip
    assert (tmp_path / "reports" / "digits-alpharecipe-ring-sall" / "runs" / "K1-seed0" / grid.ARGS_FILE).is_file()
    assert (tmp_path / "reports" / "digits-alpharecipe-regular8-s3" / "runs" / "K8-seed0").is_dir()
    options = dict(subclass_mode_model=True, subclass_mode_data=True, run=False)
    for fit, expected in zip(fits, [("ring", "all", None, 1), ("regular", 3, 8, 8)]):
        cli = MosaicCLI(MosaicModule, NodeDataModule, args=fit[1:], **options)
        (gossip,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "MosaicGossip"]
        assert (gossip.topology, gossip.peers, gossip.degree, gossip.fragments) == expected
    capsys.readouterr()
    for argv, line in [
        (["--graph", "edges.txt"], "--graph edges.txt needs --topology file, got --topology None"),
        (["--topology", "file"], "--topology file needs --graph PATH (an edge list, one 'u v' pair per line)"),
        (["--topology", "rign"], "argument --topology: invalid choice: 'rign'"),
        (["--peers", "every"], "argument --peers: must be an integer >= 1 or 'all', got 'every'"),
        (["--peers", "all"], "--peers all (every neighbour) needs a fixed graph, --topology one of ring, torus"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            grid.run_grid(["--task", "digits", "--fragments", "1", *argv], fit=fits.append)
        assert exit_info.value.code == 2 and line in capsys.readouterr().err
    assert len(fits) == 2


def test_a_fixed_graph_report_names_its_baseline_and_the_spectral_gap(tmp_path):
    """A real D-PSGD and EL-on-a-graph grid (1 seed, 10 rounds): K = 1 is named D-PSGD or "EL on regular", and the
    setup states the graph, its weights and its spectral gap (a range: every seed draws its own regular graph)."""
    common = ["--task", "digits", "--rounds", "10", "--", "--trainer.val_check_interval", "5"]
    common += ["--data.init_args.steps_per_epoch", "5"]
    dpsgd = grid.run_grid(["--fragments", "1", "--seeds", "1", "--topology", "ring", "--peers", "all",
                           "--out", str(tmp_path / "dpsgd"), *common])  # fmt: skip
    text = dpsgd.read_text()
    assert "| 1 (D-PSGD) |" in text and "node_acc_mean − D-PSGD" in text and "K = 1 is D-PSGD" in text
    assert "| topology | ring (degree 2, metropolis-hastings weights), random fragmentation" in text
    gap = json.loads((tmp_path / "dpsgd" / "runs" / "K1-seed0" / "version_0" / "summary.json").read_text())
    assert f"| spectral gap | {gap['spectral_gap']:.4g} |" in text
    sampled = grid.run_grid(["--fragments", "1", "2", "--seeds", "2", "--topology", "regular", "--degree", "4",
                             "--peers", "2", "--out", str(tmp_path / "sampled"), *common])  # fmt: skip
    text = sampled.read_text()
    assert "| 1 (EL on regular) |" in text and "| 2 |" in text
    assert "over the runs (each seed draws its own graph)" in text


def test_a_run_refused_at_setup_leaves_no_record_that_would_hold_the_grid(tmp_path, capsys):
    """``--topology ring --peers 3`` is refused inside the fit (a ring node has 2 neighbours); the corrected grid in
    the same folder then runs instead of being refused for a recorded argument list."""
    argv = ["--task", "digits", "--fragments", "1", "--seeds", "1", "--rounds", "4", "--out", str(tmp_path)]
    with pytest.raises(SystemExit):
        grid.run_grid([*argv, "--topology", "ring", "--peers", "3"])
    assert "above the degree of node 0" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "K1-seed0" / grid.ARGS_FILE).exists()
    report = grid.run_grid([*argv, "--topology", "ring", "--peers", "2", "--", "--trainer.val_check_interval", "2"])
    assert "| 1 (D-PSGD) |" in report.read_text()
