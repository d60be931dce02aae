"""``mosaic reproduce``: run a grid of experiments (K x seeds) from a recipe, resumably, and write the report.

Each run is an ordinary ``mosaic fit`` of the task's recipe with the grid's overrides, logged to
``OUT/runs/K<K>-seed<seed>/version_0``. Before a run starts, its folder ``OUT/runs/K<K>-seed<seed>`` records the
``mosaic fit`` argument list it is started with (:data:`ARGS_FILE`, without ``--ckpt_path``); a later grid that
would give that run another argument list is refused before any run starts. A run with a ``summary.json`` is done
and skipped; an interrupted run resumes from its newest checkpoint (exactly: see ``docs/reliability.md``). Then
:func:`~.report.write_report` aggregates the seeds into ``OUT/report.md``, ``OUT/curves.csv`` and one PNG per curve.

    mosaic reproduce --task digits --fragments 1 4 16 --alpha 0.1 --rounds 300 --seeds 3
    mosaic reproduce --task digits --fragments 1 8 --topology ring --peers 1 --seeds 3   # EL and Mosaic on a ring
    mosaic reproduce --task digits --fragments 1 --topology ring --peers all --seeds 3    # D-PSGD on the ring
    mosaic reproduce --task cifar10 --fragments 1 4 16 --nodes 16 --alpha 0.1 --rounds 600 --seeds 3 \\
        --data-dir /path/to/cifar10 -- --trainer.accelerator gpu

Arguments after ``--`` are passed to every ``mosaic fit`` unchanged. Each fit runs in this process through
:func:`lightning_mosaic.cli.run_lightning` (this module imports the CLI, never the reverse: ``mosaic`` knows this one
only by its entry point in :data:`lightning_mosaic.cli.SUBCOMMANDS`).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from lightning_mosaic.cli import run_lightning
from lightning_mosaic.data.partition import _resolve_alpha
from lightning_mosaic.gossip.graphs import ALL_TOPOLOGIES, GRAPH_TOPOLOGIES
from lightning_mosaic.gossip.topology import TOPOLOGIES
from lightning_mosaic.recipes import resolve
from lightning_mosaic.reproduction.report import write_report

#: task -> (its shipped recipe's name, the kind of report)
TASKS = {
    "digits": ("quickstart", "classification"),
    "cifar10": ("cifar10_mosaic", "classification"),
    "cifar100": ("cifar100_mosaic", "classification"),
    "movielens": ("movielens_mosaic", "rating"),
}


#: The file in each run's folder (``OUT/runs/K<K>-seed<seed>``) recording the ``mosaic fit`` arguments it was
#: started with: a JSON list of strings, ``--ckpt_path`` left out.
ARGS_FILE = "fit_args.json"

PROG = "mosaic reproduce"


def _positive(text: str) -> int:
    """An integer >= 1 (argparse type: the error names the value and what is allowed; argparse adds the option)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _peers(text: str) -> int | str:
    """s: an integer >= 1, or ``all`` (every neighbour of a fixed graph: D-PSGD with ``--fragments 1``)."""
    if text == "all":
        return text
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 or 'all', got {text!r}") from None


def _alpha(text: str) -> str:
    """A Dirichlet alpha as the data modules accept it (checked by the partition's own check); returned as given.

    Raises:
        argparse.ArgumentTypeError: Unless ``text`` is a float > 0, ``inf`` or ``iid``.
    """
    try:
        value: float | str = float(text)
    except ValueError:
        value = text
    try:
        _resolve_alpha(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a float > 0 or 'iid' (an IID split; also 'inf'), got {text!r}"
        ) from None
    return text


class ReproduceArgumentParser(argparse.ArgumentParser):
    """The parser of ``mosaic reproduce``: errors as in ``mosaic fit``, one line plus where to look.

    An error prints ``mosaic reproduce: error: <what>`` (with ``did you mean ...?`` from :mod:`difflib` for a bad
    choice or an unknown option) and ``see: mosaic reproduce --help`` on stderr, then exits with status 2; the
    usage is printed by ``--help`` only. An unknown option is reported before a missing required one (argparse
    would report the missing one and never the misspelling).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.arguments: list[argparse.Action] = []  # every add_argument's action (--help's included), for the hints
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """argparse's ``add_argument``, remembering the action (:attr:`arguments`)."""
        action = super().add_argument(*args, **kwargs)
        self.arguments.append(action)
        return action

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """argparse's ``parse_args``, after refusing an option that is no prefix of an option of this parser."""
        options = [option for action in self.arguments for option in action.option_strings]
        for token in sys.argv[1:] if args is None else args:
            name = token.split("=", 1)[0]
            if name.startswith("--") and not any(option.startswith(name) for option in options):
                self.error(f"unrecognized arguments: {name}")
        return super().parse_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        """Print ``message`` (and a did-you-mean) as one line, then ``see: mosaic reproduce --help``; exit 2."""
        sys.stderr.write(f"{self.prog}: error: {message}{self._did_you_mean(message)}\nsee: {self.prog} --help\n")
        self.exit(2)

    def _did_you_mean(self, message: str) -> str:
        choice = re.match(r"argument (\S+): invalid choice: '([^']*)'", message)
        if choice:
            names = set(choice.group(1).split("/"))
            action = next((a for a in self.arguments if names & set(a.option_strings)), None)
            if action is None or not action.choices:
                return ""
            close = difflib.get_close_matches(choice.group(2), [str(c) for c in action.choices], n=1, cutoff=0.4)
            return f"; did you mean {action.option_strings[-1]} {close[0]}?" if close else ""
        unknown = re.match(r"unrecognized arguments: (\S+)", message)
        if unknown and unknown.group(1).startswith("-"):
            options = [o for a in self.arguments for o in a.option_strings if o.startswith("--")]
            close = difflib.get_close_matches(unknown.group(1).split("=", 1)[0], options, n=1)
            return f"; did you mean {close[0]}?" if close else ""
        return ""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mosaic reproduce`` (:class:`ReproduceArgumentParser`: exit status 2, one line)."""
    parser = ReproduceArgumentParser(
        prog=PROG,
        description="Run a grid of Mosaic Learning runs (one per K and seed) and write a report with plots.",
        epilog="Arguments after -- are passed to every `mosaic fit` (e.g. -- --trainer.accelerator gpu).",
    )
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="which recipe family to run")
    parser.add_argument("--fragments", type=_positive, nargs="+", required=True, help="values of K (1 = EL)")
    parser.add_argument("--seeds", type=_positive, default=3, help="number of seeds (0, 1, ...); default 3")
    parser.add_argument("--rounds", type=_positive, default=None, help="gossip rounds (max_steps); default: recipe's")
    parser.add_argument(
        "--alpha", type=_alpha, default=None, help="Dirichlet alpha (a float > 0 or 'iid'); default: recipe's"
    )
    parser.add_argument("--nodes", type=_positive, default=None, help="number of nodes n; default: recipe's")
    parser.add_argument(
        "--peers", type=_peers, default=None, help="s, or 'all' (every neighbour of a fixed graph); default: recipe's"
    )
    parser.add_argument(
        "--topology",
        choices=ALL_TOPOLOGIES,
        default=None,
        help="the gossip topology (el-local, el-oracle, or a fixed graph: ring, regular, ...); default: recipe's",
    )
    parser.add_argument("--degree", type=_positive, default=None, help="degree of --topology regular")
    parser.add_argument("--graph", type=Path, default=None, help="edge-list file of --topology file")
    parser.add_argument(
        "--recipe", default=None, help="a recipe's name (movielens_genre) or YAML path; default: the task's recipe"
    )
    parser.add_argument("--data-dir", default=None, help="the datamodule's data_dir")
    parser.add_argument(
        "--out", type=Path, default=None, help="report folder (default: reports/<task>-alpha<a>[-<topology>-s<s>])"
    )
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
        SystemExit: 2 for bad arguments (one line, see :class:`ReproduceArgumentParser`; also a ``--recipe`` name
            that is neither a file nor shipped), 2 if a run's folder recorded other ``mosaic fit`` arguments than
            this grid gives it (before any run starts), or the exit status of a failed run.
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
    if args.peers == "all" and args.topology in (None, *TOPOLOGIES):
        parser.error(
            f"--peers all (every neighbour) needs a fixed graph, --topology one of {', '.join(GRAPH_TOPOLOGIES)}"
            + (f"; got --topology {args.topology}" if args.topology else "; got no --topology")
        )
    if args.graph is not None and args.topology != "file":
        parser.error(f"--graph {args.graph} needs --topology file, got --topology {args.topology}")
    if args.topology == "file" and args.graph is None:
        parser.error("--topology file needs --graph PATH (an edge list, one 'u v' pair per line)")
    if args.graph is not None and not args.graph.is_file():
        parser.error(f"--graph {args.graph}: no such file")
    alpha_text = "recipe" if args.alpha is None else args.alpha
    topology_text = ""  # reports/digits-alpha0.1-ring-s1: one folder per graph and s
    if args.topology is not None:
        topology_text = f"-{args.topology}" + ("" if args.degree is None else f"{args.degree}")
        topology_text += "" if args.peers is None else f"-s{args.peers}"
    out = (args.out or Path("reports") / f"{args.task}-alpha{alpha_text}{topology_text}").resolve()
    runs_dir = out / "runs"
    runs: dict[tuple[int, int], Path] = {}
    planned: list[tuple[str, Path, list[str]]] = []
    for k in sorted(set(args.fragments)):
        for seed in range(args.seeds):
            name = f"K{k}-seed{seed}"
            runs[(k, seed)] = runs_dir / name / "version_0"
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
                ("--gossip.topology", args.topology),
                ("--gossip.degree", args.degree),
                ("--gossip.graph", None if args.graph is None else args.graph.resolve()),
                ("--data.init_args.data_dir", args.data_dir),
            ):
                if value is not None:
                    command_line += [flag, str(value)]
            planned.append((name, runs_dir / name, [*command_line, *forwarded]))
    for name, folder, fit_args in planned:  # every run checked before the first one starts
        _check_recorded_args(name, folder, fit_args)
    for name, folder, fit_args in planned:
        run_dir = folder / "version_0"
        if (run_dir / "summary.json").is_file():
            print(f"mosaic reproduce: {name} done, skipped", flush=True)
            continue
        checkpoint = _newest_checkpoint(run_dir / "checkpoints")
        if checkpoint is not None:
            _keep_partial_log(run_dir)
            print(f"mosaic reproduce: {name} resumes from {checkpoint.name}", flush=True)
            fit([*fit_args, "--ckpt_path", str(checkpoint)])
        else:
            _record_args(folder, fit_args)
            print(f"mosaic reproduce: {name} starts", flush=True)
            try:
                fit(fit_args)
            except BaseException:
                if _newest_checkpoint(run_dir / "checkpoints") is None:  # refused or failed before any checkpoint:
                    (folder / ARGS_FILE).unlink(missing_ok=True)  # nothing to resume, so no record to hold the grid
                raise
    command = "mosaic reproduce " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["reproduce"] else argv)
    versus = "EL" if args.topology in (None, *TOPOLOGIES) else "K = 1"
    title = f"Mosaic Learning vs {versus}: {args.task}, K in {sorted(set(args.fragments))}, {args.seeds} seed(s)"
    if args.topology is not None:
        title += f", topology {args.topology}" + ("" if args.peers is None else f", s = {args.peers}")
    report = write_report(runs, out, task_kind, title, command)
    print(f"mosaic reproduce: report written to {report}", flush=True)
    return report


def _record_args(folder: Path, fit_args: list[str]) -> None:
    """Write ``fit_args`` (a run's ``mosaic fit`` arguments) to ``folder/ARGS_FILE``: a temporary name, then moved."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ARGS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(fit_args, indent=1) + "\n")
    os.replace(tmp, path)


def _check_recorded_args(name: str, folder: Path, fit_args: list[str]) -> None:
    """Refuse (exit status 2, one line) a run whose folder recorded other ``mosaic fit`` arguments than ``fit_args``.

    A folder without :data:`ARGS_FILE` (none yet, or made by an older version) is accepted as is.

    Raises:
        SystemExit: 2, naming the run, the first differing argument (old vs new) and what to do.
    """
    path = folder / ARGS_FILE
    if not path.is_file():
        return
    recorded = json.loads(path.read_text())
    if recorded == fit_args:
        return
    at = next((i for i, (a, b) in enumerate(zip(recorded, fit_args)) if a != b), min(len(recorded), len(fit_args)))

    def shown(arguments: list[str]) -> str:
        """The differing argument with its option (``--trainer.max_steps 20``), or ``(nothing)`` past the end."""
        if at >= len(arguments):
            return "(nothing)"
        start, end = at, at + 1
        if not arguments[at].startswith("--") and at > 0 and arguments[at - 1].startswith("--"):
            start = at - 1  # a value: with its option
        elif arguments[at].startswith("--") and end < len(arguments) and not arguments[end].startswith("--"):
            end += 1  # an option: with its value
        return shlex.join(arguments[start:end])

    sys.stderr.write(
        f"{PROG}: error: run {name} was started with {shown(recorded)}, this grid gives it {shown(fit_args)} "
        f"(first difference of its mosaic fit arguments, recorded in {path}); use another --out for the new "
        f"settings, or delete {folder} to run it again\n"
    )
    raise SystemExit(2)


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
