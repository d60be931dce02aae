"""The ``mosaic`` command: LightningCLI for MosaicModule + a node datamodule + the MosaicGossip and MosaicFaults
callbacks, and the dispatch to the other subcommands (:data:`SUBCOMMANDS`).

``mosaic fit --config quickstart --gossip.fragments 8 --faults.availability 0.9``. The gossip callback
is its own config group (``gossip:``), and so is the fault model (``faults:``, churn and stragglers; its defaults
simulate no fault, so a recipe without faults leaves it out); at the end of ``fit`` the final parameters are
validated once more and a summary table is printed and written as ``summary.json`` next to the logs.

What the terminal shows is kept short here: a parser error is one line with a did-you-mean and a hint
(:class:`MosaicArgumentParser`), help is plain text with the long lists of known subclasses cut to this package's
(:class:`MosaicHelpFormatter`), and Lightning's adverts are not shown (:func:`quiet_lightning`).
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import difflib
import importlib
import logging
import os
import re
import sys
import textwrap
import warnings
import zipfile
from collections.abc import Iterator
from typing import Any, NoReturn, TextIO

import torch
from jsonargparse import ArgumentParser
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightning_mosaic.models  # noqa: F401  (the built-in models, listed among --model.help's known subclasses)
from lightning_mosaic.callbacks.faults import MosaicFaults
from lightning_mosaic.callbacks.gossip import MosaicGossip
from lightning_mosaic.callbacks.summary import SUMMARY_FILE, MosaicSummary, format_summary
from lightning_mosaic.data.base import NodeDataModule
from lightning_mosaic.distributed.strategy import check_trainer, launches_the_processes
from lightning_mosaic.help_format import MosaicHelpFormatter
from lightning_mosaic.module import MosaicModule
from lightning_mosaic.recipes import expand_cli_args

PROG = "mosaic"

SUBCOMMANDS: dict[str, tuple[str, str | None]] = {
    "fit": ("train the nodes with fragment gossip, then print and write a summary (--config RECIPE)", None),
    "validate": ("evaluate every node and the averaged model on the validation data", None),
    "test": ("evaluate every node and the averaged model on the test data", None),
    "predict": ("run the model's predict_step on the predict data", None),
    "reproduce": ("run a recipe per K and seed (resumable), write a report", "lightning_mosaic.reproduction.grid:main"),
    "analyze": ("spectra and consensus of the gossip per K, plots of them", "lightning_mosaic.analysis.cli:main"),
    "recipes": ("list the shipped recipes and config pieces, with their files", "lightning_mosaic.recipes:main"),
    # Register another subcommand with one line: "name": ("one-line help", "package.module:function"),
    # where function(argv) takes the arguments after the name (imported only when that subcommand runs).
}
"""``mosaic`` subcommand -> (one-line help for ``mosaic --help``, entry point). The four without an entry point are
Lightning's, run by :class:`MosaicCLI`."""

# Lightning's adverts, logged with rank_zero_info by its logger and callback connectors at every Trainer start (the
# exact messages of lightning 2.6; another wording is shown again, which is the safe side).
LIGHTNING_ADVERTS = frozenset(
    {
        "💡 Tip: For seamless cloud logging and experiment tracking, try installing "
        "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger, which logs metrics and artifacts "
        "automatically to the Lightning Experiments platform.",
        "💡 Tip: For seamless cloud uploads and versioning, try installing "
        "[litmodels](https://pypi.org/project/litmodels/) to enable LitModelCheckpoint, which syncs automatically "
        "with the Lightning model registry.",
    }
)
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
# torch deprecated `isinstance(treespec, LeafSpec)`; Lightning's own pytree copy still builds LeafSpec() (a
# FutureWarning attributed to that module, nothing a user can change).
_LEAFSPEC_MESSAGE = re.escape("`isinstance(treespec, LeafSpec)` is deprecated")
_LEAFSPEC_MODULE = r"lightning\.pytorch\.utilities\._pytree"


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in LIGHTNING_ADVERTS


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Within the block, Lightning's two "Tip" adverts and its ``LeafSpec`` deprecation warning are not shown.

    Each is filtered where it is emitted and matched exactly: a :class:`logging.Filter` on Lightning's rank-zero
    loggers drops the two messages of :data:`LIGHTNING_ADVERTS` (every other message of those loggers passes), and a
    warnings filter ignores the ``FutureWarning`` with the LeafSpec message from ``lightning.pytorch.utilities._pytree``
    only. Both are removed on exit (the warnings filters restored as they were).
    """
    drop = _DropAdverts()
    loggers = [logging.getLogger(name) for name in _RANK_ZERO_LOGGERS]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=_LEAFSPEC_MESSAGE, category=FutureWarning, module=_LEAFSPEC_MODULE
            )
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


#: The config file being parsed (for parser errors inside it).
_CONFIG_PATH: contextvars.ContextVar[str | None] = contextvars.ContextVar("mosaic_config_path", default=None)


class MosaicArgumentParser(LightningArgumentParser):
    """The parser of ``mosaic``: :class:`MosaicHelpFormatter` help, and errors as one line plus a hint.

    An error of an outer parser (``exit_on_error``) is printed as ``mosaic: error: <what>`` (with ``did you mean
    ...?`` for an unknown option or key, from the parser's real option names) and ``see: mosaic fit --help`` (or the
    ``--model.help CLASS`` that lists the options in question), then the process exits with status 2; the full
    usage is printed by ``--help`` only. ``MOSAIC_TRACEBACK=1`` (or jsonargparse's ``JSONARGPARSE_DEBUG``) gives
    jsonargparse's own report instead.
    """

    def __init__(self, *args: Any, formatter_class: type[argparse.HelpFormatter] = MosaicHelpFormatter, **kwargs: Any):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def parse_path(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        """jsonargparse's ``parse_path``, remembering ``path`` so that an error inside that file names it."""
        token = _CONFIG_PATH.set(str(path))
        try:
            return super().parse_path(path, *args, **kwargs)
        finally:
            _CONFIG_PATH.reset(token)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Print ``message`` as one line plus a hint and exit with status 2 (see the class docstring).

        Raises:
            SystemExit: 2, unless this parser does not exit on errors (jsonargparse's inner parsers), whose
                ``ArgumentError`` reaches the outer parser.
        """
        debug = os.environ.get("MOSAIC_TRACEBACK") == "1" or os.environ.get("JSONARGPARSE_DEBUG")
        if not self.exit_on_error or debug:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        line, hint = explain_parser_error(message, parser, _CONFIG_PATH.get())
        sys.stderr.write(f"{PROG}: error: {line}\nsee: {hint}\n")
        self.exit(2)


_KEY = re.compile(r'Parser key "([^"]+)":\s*(.*)', re.S)
_CLASS_PROBLEM = re.compile(r"Problem with given class_path '([^']+)':\s*(.*)", re.S)
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_NOT_ACCEPTED_BY = re.compile(r"Subcommand '([^']+)' does not accept option '([^']+)'")
_EXPECTED = re.compile(r"Expected an? (.+?)\. Got value: (.*)", re.S)
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)", re.S)


def _alternatives(text: str) -> list[str]:
    """The ``- `` items of jsonargparse's report on a union (each item one alternative that failed), if any."""
    lines = text.splitlines()
    if not text.startswith("- ") and not any(line.strip() == "Errors:" for line in lines):
        return []
    if not text.startswith("- "):  # "Does not validate against any of the Union subtypes ... Errors: - ... - ..."
        at = next(i for i, line in enumerate(lines) if line.strip() == "Errors:")
        indent = len(lines[at]) - len(lines[at].lstrip())
        body = []
        for line in lines[at + 1 :]:
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            body.append(line)
        text = textwrap.dedent("\n".join(body)).strip()
        lines = text.splitlines()
    items: list[list[str]] = []
    for line in lines:
        if line.startswith("- "):
            items.append([line[2:]])
        elif items:
            items[-1].append(line)
    return [textwrap.dedent("\n".join([item[0], textwrap.dedent("\n".join(item[1:]))])).strip() for item in items]


def _option_names(parser: ArgumentParser) -> list[str]:
    """Every key the parser accepts (``gossip.fragments``, ``trainer.max_steps``, ...)."""
    try:
        return list(parser.get_defaults().keys())
    except Exception:  # a parser whose defaults do not validate: no suggestions rather than a second error
        return []


def _class_option_names(class_path: str) -> list[str]:
    """The init arguments of the class at ``class_path`` as jsonargparse reads them (``**kwargs`` followed)."""
    module, _, name = class_path.rpartition(".")
    try:
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(getattr(importlib.import_module(module), name))
    except Exception:  # not importable or not a class: no suggestions
        return []
    return _option_names(parser)


def _did_you_mean(word: str, candidates: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


def _plain_type(text: str) -> str:
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", text)
    return f"one of {literal.group(1)}" if literal else text


def explain_parser_error(message: str, parser: ArgumentParser, config_file: str | None = None) -> tuple[str, str]:
    """One line for a jsonargparse error ``message`` of ``parser``, and a hint where to find the options.

    Follows jsonargparse's nested report (``Parser key "k":``, the alternatives of a union, ``Problem with given
    class_path 'C':``) down to the reason, naming the full key (``model.init_args.seed``). An unknown option
    (``--gossip.fragmnets``), an unknown key (``gossip.pears`` in a YAML file) or an unknown init argument of a
    class gets ``did you mean ...?`` from the names ``parser`` (or the class) really accepts. ``config_file``, the
    file being parsed when the error came, is named in the line.

    Returns:
        ``(line, hint)``, e.g. ``("unrecognized arguments: --gossip.fragmnets 4; did you mean --gossip.fragments?",
        "mosaic fit --help")``.
    """
    prog = parser.prog.replace(" [options]", "")
    hint = f"{prog} --help"
    line, hint = _explain(message, parser, prog, hint)
    if config_file and line.startswith("not valid YAML"):
        line = f"{config_file}: {line}"
    elif config_file and config_file not in line:
        line += f" (reading {config_file})"
    return line, hint


def _explain(message: str, parser: ArgumentParser, prog: str, hint: str) -> tuple[str, str]:
    from_command_line = "NestedArg" in message
    unrecognized = _UNRECOGNIZED.fullmatch(message.strip())
    if unrecognized:
        line = f"unrecognized arguments: {unrecognized.group(1).strip()}"
        names = _option_names(parser)
        unknown = [word[2:].split("=", 1)[0] for word in unrecognized.group(1).split() if word.startswith("--")]
        return line + (_did_you_mean(unknown[0], names, "--") if unknown else ""), hint
    key_error = _NOT_ACCEPTED_BY.search(message)
    if key_error:
        key = key_error.group(2)
        return f"{key}: not an option of {prog}" + _did_you_mean(key, _option_names(parser)), hint
    if message.startswith("Problems parsing config: "):  # the YAML (or JSON) loader's report, "in <unicode string>"
        report = message.removeprefix("Problems parsing config: ").replace('in "<unicode string>", ', "")
        return "not valid YAML: " + ", ".join(line.strip() for line in report.splitlines() if line.strip()), hint
    keys: list[str] = []
    class_path = None
    text = textwrap.dedent(message).strip()
    while True:
        key = _KEY.fullmatch(text)
        problem = _CLASS_PROBLEM.fullmatch(text)
        alternatives = _alternatives(text)
        if key:
            keys.append(key.group(1))
            text = textwrap.dedent(key.group(2)).strip()
        elif problem:
            class_path = problem.group(1)
            text = textwrap.dedent(problem.group(2)).strip()
            keys.append("init_args")
        elif alternatives:
            useful = [item for item in alternatives if not item.startswith("Expected a <class 'NoneType'>")]
            classes = [item for item in useful if item.startswith("Problem with given class_path")]
            text = (classes or useful or alternatives)[0]
        else:
            break
    if keys[-1:] == ["init_args"] and not (_KEY.match(text) or _NOT_ACCEPTED.fullmatch(text)):
        keys.pop()  # the class itself is the problem (e.g. not importable), not one of its arguments
    full_key = ".".join(keys)
    if class_path is not None and "init_args" in keys:  # one of the class's arguments: the help lists them
        hint = f"{prog} --{full_key.rsplit('.init_args', 1)[0]}.help {class_path}"
    not_accepted = _NOT_ACCEPTED.fullmatch(text)
    expected = _EXPECTED.fullmatch(text)
    if not_accepted:
        option = not_accepted.group(1)
        where = f"{full_key}.{option}"
        names = _class_option_names(class_path) if class_path else []
        line = f"{where}: not an option of {class_path}" if class_path else f"{where}: not an option"
        return line + _did_you_mean(option, names, ("--" if from_command_line else "") + full_key + "."), hint
    if expected:
        detail = f"expected {_plain_type(expected.group(1))}, got {expected.group(2).strip()!r}"
    else:
        detail = " ".join(line.strip() for line in text.splitlines() if line.strip())
    if class_path is not None and "init_args" not in keys and class_path not in detail:
        detail = f"{class_path}: {detail}"  # the class itself is the problem
    return (f"{full_key}: {detail}" if full_key else detail), hint


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """Refuse a checkpoint file that is missing, truncated or not a PyTorch zip archive, naming it.

    Reads the archive's directory and checks every member's CRC (no unpickling), so it costs one read of the file.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a complete zip archive (what ``torch.save`` writes).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ckpt_path {path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"ckpt_path {path} is truncated or not a PyTorch checkpoint ({error})") from None
    if bad is not None:
        raise ValueError(f"ckpt_path {path} is corrupt: member {bad} fails its CRC check")


class MosaicCLI(LightningCLI):
    """LightningCLI with ``gossip`` and ``faults`` groups and the end-of-fit summary.

    Its parser is :class:`MosaicArgumentParser` unless ``parser_class`` says otherwise; every other argument is
    LightningCLI's.
    """

    def __init__(self, *args: Any, parser_class: type[LightningArgumentParser] = MosaicArgumentParser, **kwargs: Any):
        super().__init__(*args, parser_class=parser_class, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse the command line into ``self.config``, then check a local ``--ckpt_path`` file.

        A missing or truncated file is refused here, naming it, before any class is instantiated or anything is
        written. The config is the source of truth: LightningCLI would read the checkpoint's hyperparameters back
        into the config right after this method, so the path is held back until :meth:`before_instantiate_classes`
        puts it back; a checkpoint of other gossip settings is refused by :meth:`before_fit`
        (``MosaicGossip.check_checkpoint``) before anything is written, one of another configuration otherwise when it
        is loaded (``MosaicModule.on_load_checkpoint``), naming the mismatch.

        Raises:
            FileNotFoundError: If ``--ckpt_path`` names a local file that does not exist.
            ValueError: If that file is truncated or not a PyTorch checkpoint.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        self._held_ckpt_path = ckpt_path
        if not ckpt_path:
            return
        if str(ckpt_path) not in ("last", "best", "hpc", "registry") and "://" not in str(ckpt_path):
            check_checkpoint_file(ckpt_path)
        self.config[subcommand]["ckpt_path"] = None

    def before_instantiate_classes(self) -> None:
        """Put back the ``--ckpt_path`` that :meth:`parse_arguments` held back."""
        if self._held_ckpt_path:
            self.config[self.config["subcommand"]]["ckpt_path"] = self._held_ckpt_path

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(MosaicFaults, "faults")
        parser.add_lightning_class_args(MosaicGossip, "gossip")
        # Each process reads its own nodes' data: Lightning must not add a DistributedSampler (MosaicStrategy).
        parser.set_defaults({"trainer.use_distributed_sampler": False})
        parser.link_arguments("data.init_args.num_nodes", "model.init_args.num_nodes")

    def before_fit(self) -> None:
        """Check the whole configuration before anything runs or is written (no empty run folders on bad input)."""
        trainer, model, data = self.trainer, self.model, self.datamodule
        if getattr(data, "num_nodes", model.num_nodes) != model.num_nodes:
            raise ValueError(
                f"data.num_nodes={data.num_nodes} but model.num_nodes={model.num_nodes}; the node count is "
                "data.init_args.num_nodes (the model's is linked to it)"
            )
        sampler = self.config[self.subcommand]["trainer"]["use_distributed_sampler"]
        check_trainer(trainer, model.num_nodes, use_distributed_sampler=sampler)  # before any process is started
        for callback in trainer.callbacks:
            if isinstance(callback, MosaicGossip) and isinstance(model, MosaicModule):
                callback.attach(model)  # checks K, s and the topology against n and d (rebuilt per process later)
            if isinstance(callback, MosaicFaults) and isinstance(model, MosaicModule):
                callback.attach(model)  # reads the churn trace against n (rebuilt per process later)
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if ckpt_path and os.path.isfile(ckpt_path):  # a resume of other gossip settings: refused before any write
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
            faults = next((c for c in trainer.callbacks if isinstance(c, MosaicFaults)), None)
            for callback in trainer.callbacks:
                if isinstance(callback, MosaicGossip) and isinstance(model, MosaicModule):
                    callback.check_checkpoint(checkpoint, faults)
        if launches_the_processes(trainer):  # load and partition now: data errors come before the run folder
            data.prepare_data()
            data.setup("fit")
        self._summary = next((c for c in trainer.callbacks if isinstance(c, MosaicSummary)), None)
        if self._summary is None:
            self._summary = MosaicSummary()
            trainer.callbacks.append(self._summary)  # after MosaicGossip: its time counts the gossip rounds

    def after_fit(self) -> None:
        """Validate the final parameters unless the last step was validated, then print the summary (rank 0)."""
        trainer, summary = self.trainer, self._summary
        if summary.validated_step != trainer.global_step or "val/loss" not in trainer.callback_metrics:
            trainer.validate(self.model, datamodule=self.datamodule, verbose=False)  # rewrites summary.json
        path = summary.directory(trainer) / SUMMARY_FILE  # on every rank (a collective)
        if trainer.is_global_zero and summary.summary is not None:
            print(f"\nMosaic Learning summary ({path}):\n{format_summary(summary.summary)}", flush=True)


def _concise(error: BaseException) -> str:
    """The library's own message out of jsonargparse's report on a class that failed to instantiate.

    jsonargparse lists one error per member of the ``Union[<class>, None]`` it tried; only the class's matters.
    """
    text = str(error)
    if "Errors:" not in text:
        return text
    reasons = [
        line.strip()[2:]
        for line in text.split("Errors:", 1)[1].splitlines()
        if line.strip().startswith("- ") and "NoneType" not in line
    ]
    return "; ".join(reasons) or text


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn a configuration error into ``mosaic: error: ...`` and exit status 2.

    A configuration error is one raised by the library (``ValueError``, ``TypeError``, ``FileNotFoundError``) or
    Lightning's ``MisconfigurationException`` (e.g. ``--trainer.devices 0``, or ``--trainer.accelerator gpu`` on a
    machine without one), raised when the Trainer is built, before anything is written.
    """
    try:
        yield
    except (ValueError, TypeError, FileNotFoundError, MisconfigurationException) as error:
        if os.environ.get("MOSAIC_TRACEBACK") == "1":
            raise
        print(f"mosaic: error: {_concise(error)}", file=sys.stderr)
        print("(set MOSAIC_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def _run_cli(args: Any) -> None:
    MosaicCLI(
        MosaicModule,
        NodeDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": PROG},
        args=args,
    )


def run_lightning(argv: list[str]) -> None:
    """Run one Lightning subcommand of ``mosaic`` (``fit``, ``validate``, ``test``, ``predict``) from ``argv``.

    ``argv`` stands for the process's command line during the run (``sys.argv`` is ``[sys.argv[0], *argv]`` and is
    restored afterwards): for a caller that has consumed its own command line, such as ``mosaic reproduce`` running
    each fit of its grid. LightningCLI then parses it as the command line, so it has no reason to warn that
    ``args`` and command-line arguments were both given (which :func:`main` called with a list from a script that
    has its own arguments still does). Errors as in :func:`main`.

    Raises:
        ValueError: If ``argv`` does not start with one of the Lightning subcommands.
        SystemExit: 2 for a configuration error (printed as one line), 0 after ``--help``.
    """
    if not argv or argv[0] not in MosaicCLI.subcommands():
        raise ValueError(
            f"run_lightning needs argv starting with one of {sorted(MosaicCLI.subcommands())}, got {argv[:1]}"
        )
    argv = expand_cli_args(argv)  # shipped names become their paths, as in main
    saved = sys.argv
    sys.argv = [saved[0] if saved else PROG, *argv]
    try:
        with quiet_lightning(), _one_line_errors():
            _run_cli(None)
    finally:
        sys.argv = saved


def _print_overview(file: TextIO) -> None:
    width = max(len(name) for name in SUBCOMMANDS) + 2
    lines = [
        f"usage: {PROG} SUBCOMMAND [options]",
        "",
        "Mosaic Learning (K fragments gossiped to their own random peers; K = 1 is Epidemic Learning) on Lightning.",
        "",
        "subcommands:",
        *(f"  {name:<{width}}{summary}" for name, (summary, _) in SUBCOMMANDS.items()),
        "",
        f"{PROG} SUBCOMMAND --help lists the options of one, e.g. {PROG} fit --help.",
    ]
    print("\n".join(lines), file=file)


def main(args: Any = None) -> None:
    """Entry point of the ``mosaic`` console script: dispatches to the subcommands of :data:`SUBCOMMANDS`.

    ``mosaic fit ...`` (``validate``, ``test``, ``predict``) runs :class:`MosaicCLI`; the other subcommands run the
    function their entry names with the arguments after the subcommand; ``mosaic``, ``mosaic -h`` and
    ``mosaic --help`` list the subcommands. A configuration error (a parser error, or a ``ValueError``,
    ``TypeError`` or ``FileNotFoundError`` raised by the library) is printed as one line, ``mosaic: error: ...``,
    plus at most a hint line, with exit status 2, before anything is written; ``MOSAIC_TRACEBACK=1`` shows the full
    traceback (the full jsonargparse report for a parser error). Lightning's two "Tip" adverts and its ``LeafSpec``
    deprecation warning are not shown (:func:`quiet_lightning`). Shipped recipe and piece names given to ``--config``
    (``quickstart``, ``gossip/el``) are replaced by their files' paths first (:func:`lightning_mosaic.recipes.
    expand_names`); an unknown one is one line, exit status 2.

    Args:
        args: The arguments after ``mosaic`` (``sys.argv[1:]`` when ``None``); a ``dict`` is a configuration for
            :class:`MosaicCLI`.

    Raises:
        SystemExit: 2 for bad input (an unknown subcommand, a configuration error), 0 after a help.
    """
    argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else None
    if argv:  # shipped names (--config quickstart, --config gossip/el) become their paths (lightning_mosaic.recipes)
        argv = expand_cli_args(argv)
        if args is None:
            sys.argv[1:] = argv  # LightningCLI parses sys.argv (given args as well, it warns)
        else:
            args = argv
    if argv is not None and (not argv or argv[0] in ("-h", "--help")):
        _print_overview(sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    name = argv[0] if argv else None
    with quiet_lightning(), _one_line_errors():
        if argv is None or name.startswith("-") or name in MosaicCLI.subcommands():  # top-level options: LightningCLI
            _run_cli(args)
            return
        if name not in SUBCOMMANDS:
            close = difflib.get_close_matches(name, list(SUBCOMMANDS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            print(f"{PROG}: error: unknown subcommand {name!r}{hint}", file=sys.stderr)
            print(f"see: {PROG} --help", file=sys.stderr)
            raise SystemExit(2)
        module, _, function = SUBCOMMANDS[name][1].partition(":")
        getattr(importlib.import_module(module), function)(argv[1:])


if __name__ == "__main__":
    main()
