"""Round time and bytes sent per process when the same n nodes are spread over 1, 2 and 4 processes.

Runs the `mosaic` CLI on a recipe (default: the quickstart, 16 digits nodes, K = 8, s = 3) once per process count,
with `Trainer(strategy="mosaic", devices=w)` on CPU (gloo over loopback), and prints, measured in this one run:

- seconds per round (local step + gossip, from the run's summary) and its ratio to the 1-process run;
- payload bytes rank 0 sent per round (logged as `gossip/bytes_sent_per_rank`) against the ideal
  m * s * d * 4 bytes (m = nodes on rank 0: what its nodes would send as separate processes).

    python benchmarks/distributed_scaling.py --rounds 100 --processes 1 2 4 --out benchmarks/distributed_scaling.json

On a 2-core machine, 4 processes oversubscribe the cores: the time ratio then measures contention, not the method.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from lightning_mosaic.distributed.sharding import node_bounds
from lightning_mosaic.recipes import resolve


def run(recipe: Path, rounds: int, processes: int, workdir: Path) -> dict[str, float]:
    save_dir = workdir / f"w{processes}"
    command = [sys.executable, "-m", "lightning_mosaic.cli", "fit", "--config", str(recipe)]
    command += ["--trainer.max_steps", str(rounds), "--trainer.logger.init_args.save_dir", str(save_dir)]
    command += ["--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "false"]
    command += ["--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1"]
    if processes > 1:
        command += ["--trainer.devices", str(processes), "--trainer.strategy", "mosaic"]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{processes} process(es) failed:\n{result.stderr[-3000:]}")
    (summary_file,) = save_dir.rglob("summary.json")
    summary = json.loads(summary_file.read_text())
    rows = list(csv.DictReader(next(save_dir.rglob("metrics.csv")).open()))
    sent = [float(r["gossip/bytes_sent_per_rank"]) for r in rows if r.get("gossip/bytes_sent_per_rank")]
    n, d, s = summary["nodes"], summary["parameters_per_node"], summary["peers"]
    m = node_bounds(n, processes)[1]
    return {
        "processes": processes,
        "nodes_on_rank_0": m,
        "seconds_per_round": summary["train_seconds_per_round"],
        "bytes_sent_rank_0_per_round": sum(sent) / len(sent) if sent else 0.0,
        "ideal_bytes_rank_0_per_round": float(m * s * d * 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=resolve, default="quickstart", help="a recipe's name or YAML path")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(args.recipe.resolve(), args.rounds, w, Path(tmp)) for w in args.processes]
    base = rows[0]["seconds_per_round"]
    for row in rows:
        row["time_ratio_to_first"] = row["seconds_per_round"] / base
        ideal = row["ideal_bytes_rank_0_per_round"]
        row["bytes_ratio_to_ideal"] = row["bytes_sent_rank_0_per_round"] / ideal if row["processes"] > 1 else 0.0
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, gloo over loopback"
    print(f"{args.recipe.name}, {args.rounds} rounds; {machine}")
    print("processes | nodes on rank 0 | s/round | time vs 1st | bytes sent by rank 0/round | ideal | sent/ideal")
    for r in rows:
        print(
            f"{r['processes']:>9} | {r['nodes_on_rank_0']:>15} | {r['seconds_per_round']:.4f} | "
            f"{r['time_ratio_to_first']:>11.2f} | {r['bytes_sent_rank_0_per_round']:>26,.0f} | "
            f"{r['ideal_bytes_rank_0_per_round']:>9,.0f} | {r['bytes_ratio_to_ideal']:.3f}"
        )
    if args.out is not None:
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(json.dumps({"machine": machine, "rounds": args.rounds, "rows": rows}, indent=2) + "\n")
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
