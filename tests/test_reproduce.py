"""``mosaic reproduce``: a real (tiny) grid over K and seeds on digits, the report, and resuming the grid."""

from __future__ import annotations

import csv
import sys
import warnings

import pytest

import lightning_mosaic.reproduction.grid as grid
from lightning_mosaic import MosaicFaults, MosaicModule
from lightning_mosaic.cli import MosaicCLI, main
from lightning_mosaic.data.base import NodeDataModule


def test_reproduce_runs_the_grid_writes_the_report_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    argv = ["reproduce", "--task", "digits", "--fragments", "1", "4", "--seeds", "2", "--rounds", "10"]
    argv += ["--out", str(out), "--", "--data.init_args.steps_per_epoch", "5"]
    monkeypatch.setattr(sys, "argv", ["mosaic", *argv])  # as the console script runs it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main()
    # each fit parses its own command line: LightningCLI has no reason to warn about args and sys.argv both given
    assert not [w for w in caught if "args parameter is intended" in str(w.message)]
    report = (out / "report.md").read_text()
    assert "| 1 (EL) |" in report and "| 4 |" in report and "node_acc_mean − EL" in report
    for name in ("node_acc_mean", "avg_model_acc", "consensus_distance", "node_acc_std"):
        assert (out / f"{name}.png").stat().st_size > 1000
    rows = list(csv.DictReader((out / "curves.csv").open()))
    validation = {(r["fragments"], r["round"]) for r in rows if r["metric"] == "val/node_acc_mean"}
    assert validation == {(k, r) for k in ("1", "4") for r in ("5", "10")}  # every 5 rounds (epochs of 5 steps)
    assert all(r["seeds"] == "2" and float(r["std"]) >= 0 for r in rows)
    # logged by the gossip every 10 rounds and by every validation
    assert {r["round"] for r in rows if r["metric"] == "gossip/consensus_distance"} == {"5", "10"}
    assert not list(out.rglob("*.tmp*"))

    # an interrupted grid: one run lost its summary (as if killed after its last checkpoint) -> it resumes
    (out / "runs" / "K4-seed1" / "version_0" / "summary.json").unlink()
    capsys.readouterr()
    main(argv)
    printed = capsys.readouterr().out
    assert printed.count("done, skipped") == 3 and "K4-seed1 resumes from epoch=1-step=10.ckpt" in printed
    assert (out / "runs" / "K4-seed1" / "version_0" / "summary.json").is_file()


def test_reproduce_refuses_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--task", "mnist", "--fragments", "1"])
    assert exit_info.value.code == 2 and "invalid choice: 'mnist'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reproduce", "--task", "digits", "--fragments", "0"])
    assert "must be an integer >= 1, got 0" in capsys.readouterr().err


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
