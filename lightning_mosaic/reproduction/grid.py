"""``mosaic reproduce``: run a grid of experiments (K x seeds) from a recipe, resumably, and write the report.

Each run is an ordinary ``mosaic fit`` of the task's recipe with the grid's overrides, logged to
``OUT/runs/K<K>-seed<seed>/version_0``. A run with a ``summary.json`` is done and skipped; an interrupted run resumes
from its newest checkpoint (exactly: see ``docs/reliability.md``). Then :func:`~.report.write_report` aggregates the
seeds into ``OUT/report.md``, ``OUT/curves.csv`` and one PNG per curve.

    mosaic reproduce --task digits --fragments 1 4 16 --alpha 0.1 --rounds 300 --seeds 3
    mosaic reproduce --task cifar10 --fragments 1 4 16 --nodes 16 --alpha 0.1 --rounds 600 --seeds 3 \\
        --data-dir /path/to/cifar10 -- --trainer.accelerator gpu

Arguments after ``--`` are passed to every ``mosaic fit`` unchanged. Each fit runs in this process through
:func:`lightning_mosaic.cli.run_lightning` (this module imports the CLI, never the reverse: ``mosaic`` knows this one
only by its entry point in :data:`lightning_mosaic.cli.SUBCOMMANDS`).
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from lightning_mosaic.cli import run_lightning
from lightning_mosaic.recipes import resolve
from lightning_mosaic.reproduction.report import write_report

#: task -> (its shipped recipe's name, the kind of report)
TASKS = {
    "digits": ("quickstart", "classification"),
    "cifar10": ("cifar10_mosaic", "classification"),
    "cifar100": ("cifar100_mosaic", "classification"),
    "movielens": ("movielens_mosaic", "rating"),
}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mosaic reproduce`` (argparse: it exits with status 2 naming a bad argument)."""
    parser = argparse.ArgumentParser(
        prog="mosaic reproduce",
        description="Run a grid of Mosaic Learning runs (one per K and seed) and write a report with plots.",
        epilog="Arguments after -- are passed to every `mosaic fit` (e.g. -- --trainer.accelerator gpu).",
    )
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="which recipe family to run")
    parser.add_argument("--fragments", type=_positive, nargs="+", required=True, help="values of K (1 = EL)")
    parser.add_argument("--seeds", type=_positive, default=3, help="number of seeds (0, 1, ...); default 3")
    parser.add_argument("--rounds", type=_positive, default=None, help="gossip rounds (max_steps); default: recipe's")
    parser.add_argument("--alpha", default=None, help="Dirichlet alpha (a float > 0 or 'iid'); default: recipe's")
    parser.add_argument("--nodes", type=_positive, default=None, help="number of nodes n; default: recipe's")
    parser.add_argument("--peers", type=_positive, default=None, help="s; default: recipe's")
    parser.add_argument(
        "--recipe", default=None, help="a recipe's name (movielens_genre) or YAML path; default: the task's recipe"
    )
    parser.add_argument("--data-dir", default=None, help="the datamodule's data_dir")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: reports/<task>-alpha<a>)")
    return parser


def main(argv: list[str]) -> None:
    """Entry point of ``mosaic reproduce`` (``argv``: the arguments after ``reproduce``); see :func:`run_grid`."""
    run_grid(argv)


def run_grid(argv: list[str], fit: Callable[[list[str]], None] = run_lightning) -> Path:
    """Parse ``argv`` (without ``reproduce``), run every missing run, write the report; return ``report.md``.

    Args:
        argv: The ``mosaic reproduce`` arguments; after ``--``, arguments forwarded to every run.
        fit: Runs one ``mosaic fit`` from its argument list (``["fit", "--config", ...]``); by default
            :func:`~lightning_mosaic.cli.run_lightning`, which runs it as this process's command line.

    Raises:
        SystemExit: 2 for bad arguments (argparse; also a ``--recipe`` name that is neither a file nor shipped), or
            the exit status of a failed run.
        FileNotFoundError: If the recipe path does not exist.
    """
    forwarded: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, forwarded = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    recipe_name, task_kind = TASKS[args.task]
    try:
        recipe = resolve(args.recipe or recipe_name).resolve()
    except LookupError as error:
        parser.error(f"--recipe {error.args[0]}")
    if not recipe.is_file():
        raise FileNotFoundError(f"recipe {recipe} does not exist; pass --recipe PATH")
    alpha_text = "recipe" if args.alpha is None else args.alpha
    out = (args.out or Path("reports") / f"{args.task}-alpha{alpha_text}").resolve()
    runs_dir = out / "runs"
    runs: dict[tuple[int, int], Path] = {}
    for k in sorted(set(args.fragments)):
        for seed in range(args.seeds):
            name = f"K{k}-seed{seed}"
            run_dir = runs_dir / name / "version_0"
            runs[(k, seed)] = run_dir
            if (run_dir / "summary.json").is_file():
                print(f"mosaic reproduce: {name} done, skipped", flush=True)
                continue
            command_line = ["fit", "--config", str(recipe), "--gossip.fragments", str(k), "--gossip.seed", str(seed)]
            command_line += ["--faults.seed", str(seed)]  # churn and stragglers (-- --faults.availability ...)
            command_line += ["--seed_everything", str(seed), "--model.init_args.seed", str(seed)]
            command_line += ["--data.init_args.seed", str(seed), "--trainer.logger.init_args.save_dir", str(runs_dir)]
            command_line += ["--trainer.logger.init_args.name", name, "--trainer.logger.init_args.version", "0"]
            command_line += ["--trainer.enable_progress_bar", "false"]
            for flag, value in (
                ("--trainer.max_steps", args.rounds),
                ("--data.init_args.alpha", args.alpha),
                ("--data.init_args.num_nodes", args.nodes),
                ("--gossip.peers", args.peers),
                ("--data.init_args.data_dir", args.data_dir),
            ):
                if value is not None:
                    command_line += [flag, str(value)]
            checkpoint = _newest_checkpoint(run_dir / "checkpoints")
            if checkpoint is not None:
                _keep_partial_log(run_dir)
                command_line += ["--ckpt_path", str(checkpoint)]
                print(f"mosaic reproduce: {name} resumes from {checkpoint.name}", flush=True)
            else:
                print(f"mosaic reproduce: {name} starts", flush=True)
            fit([*command_line, *forwarded])
    command = "mosaic reproduce " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["reproduce"] else argv)
    title = f"Mosaic Learning vs EL: {args.task}, K in {sorted(set(args.fragments))}, {args.seeds} seed(s)"
    report = write_report(runs, out, task_kind, title, command)
    print(f"mosaic reproduce: report written to {report}", flush=True)
    return report


def _newest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint with the largest ``step=N`` in ``directory``, if any."""
    found = []
    for path in directory.glob("*.ckpt"):
        match = re.search(r"step=(\d+)", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def _keep_partial_log(run_dir: Path) -> None:
    """Keep the interrupted run's ``metrics.csv`` (the resumed logger starts a new one) as ``metrics.partN.csv``."""
    log = run_dir / "metrics.csv"
    if log.is_file():
        part = len(list(run_dir.glob("metrics.part*.csv")))
        shutil.move(log, run_dir / f"metrics.part{part}.csv")
