"""The recipe hub: the shipped recipes and config pieces, addressable by name.

The package ships complete experiments (``lightning_mosaic/recipes/<name>.yaml``) and the pieces they are built from
(``lightning_mosaic/configs/<group>/<name>.yaml``, and ``configs/base.yaml``, which every recipe includes). A *name*
is a recipe's file name without ``.yaml`` (``quickstart``) or a piece's path under ``configs/`` without it
(``gossip/el``, ``partition/alpha_0.5``, ``model/resnet8_cifar100``, ``analysis/paper_fig2_fig3``):

    mosaic fit --config quickstart --config gossip/el                  # the quickstart with EL (K = 1)
    mosaic fit --config cifar100_mosaic --model model/resnet8_cifar100  # another model piece
    mosaic analyze --config analysis/paper_fig2_fig3
    mosaic recipes                                                     # names, descriptions and paths

The ``mosaic`` command turns every such name given to ``--config`` (``-c``), ``--model`` or ``--data`` into the
shipped file's path before anything is parsed (:func:`expand_names`); a path to an existing file is kept as it is.
Inside a YAML file, included files are paths, relative to the file that names them (``config:
../configs/base.yaml``), which jsonargparse resolves.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent
CONFIGS_DIR = RECIPES_DIR.parent / "configs"
#: The options whose values may be names: the config files, and the model and data groups (group-format pieces).
NAME_OPTIONS = ("--config", "-c", "--model", "--data")
_NAME = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?")
_FILE_SUFFIXES = (".yaml", ".yml", ".json", ".jsonnet")


def available() -> dict[str, Path]:
    """Every shipped name and its file: the recipes first (``quickstart``), then the pieces (``gossip/el``).

    Returns:
        ``{name: absolute path}``, recipes sorted by name, then pieces sorted by name.
    """
    recipes = {path.stem: path for path in sorted(RECIPES_DIR.glob("*.yaml"))}
    pieces = {
        path.relative_to(CONFIGS_DIR).with_suffix("").as_posix(): path for path in sorted(CONFIGS_DIR.rglob("*.yaml"))
    }
    return {**recipes, **pieces}


def is_name(value: str) -> bool:
    """Whether ``value`` has the form of a name (``quickstart``, ``gossip/el``): no config suffix, no spaces or ``:``.

    A value of that form that is also an existing file is a path, not a name (see :func:`resolve`).
    """
    return _NAME.fullmatch(value) is not None and not value.lower().endswith(_FILE_SUFFIXES)


def resolve(name_or_path: str | Path) -> Path:
    """The file a ``--config`` value stands for.

    Args:
        name_or_path: A path to an existing file (kept), a recipe name (``quickstart``), a piece name (``gossip/el``),
            or any other path (kept: its reader reports it if it is missing).

    Returns:
        The path: the given one, or the shipped file of the name.

    Raises:
        LookupError: If ``name_or_path`` has the form of a name (:func:`is_name`), is not an existing file and no
            shipped recipe or piece has that name; the message lists the available names.
    """
    path = Path(name_or_path)
    text = str(name_or_path)
    if path.is_file() or not is_name(text):
        return path
    names = available()
    if text in names:
        return names[text]
    recipes = ", ".join(name for name, file in names.items() if file.parent == RECIPES_DIR)
    pieces = ", ".join(name for name, file in names.items() if file.parent != RECIPES_DIR)
    raise LookupError(
        f"{text} is no file and no shipped name; recipes: {recipes}; pieces: {pieces} "
        "(`mosaic recipes` lists them with their paths)"
    )


def expand_names(argv: list[str]) -> list[str]:
    """``argv`` with every shipped name given to ``--config``/``-c`` (and ``--model``, ``--data``) replaced by its path.

    ``--config NAME`` and ``--config=NAME`` are both recognised, anywhere in ``argv`` (before or after the
    subcommand, and after ``--`` for ``mosaic reproduce``). A value that is an existing file, a config string (YAML
    text) or any other path is kept. For ``--model`` and ``--data``, which also take class names, only a value
    naming a shipped piece is replaced; everything else is left to the parser.

    Raises:
        LookupError: A ``--config`` value has the form of a name and is neither a file nor a shipped name (the
            message lists the available names).
    """
    expanded = list(argv)
    for i, arg in enumerate(expanded):
        option, equals, value = arg.partition("=")
        if equals and option in NAME_OPTIONS:
            expanded[i] = f"{option}={_expand(option, value)}"
        elif arg in NAME_OPTIONS and i + 1 < len(expanded):
            expanded[i + 1] = _expand(arg, expanded[i + 1])
    return expanded


def expand_cli_args(argv: list[str]) -> list[str]:
    """:func:`expand_names` for the ``mosaic`` command: an unknown name prints one line and exits with status 2.

    Raises:
        SystemExit: 2, after ``mosaic: error: <the LookupError's message>`` on stderr.
    """
    try:
        return expand_names(argv)
    except LookupError as error:
        print(f"mosaic: error: {error.args[0]}", file=sys.stderr)
        raise SystemExit(2) from None


def _expand(option: str, value: str) -> str:
    if option in ("--config", "-c"):
        return str(resolve(value))
    path = available().get(value) if "/" in value and not Path(value).is_file() else None
    return str(path) if path is not None else value


def description(path: Path) -> str:
    """The first comment line of a YAML file, without ``#`` (empty when it does not start with a comment)."""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip()
        if stripped:
            return ""
    return ""


def main(argv: list[str] | None = None) -> int:
    """``mosaic recipes``: list the shipped recipes and pieces (name, first comment line, path), or print paths.

    ``mosaic recipes`` prints every name with the first comment line of its file and, below, the file's path;
    ``mosaic recipes NAME ...`` prints the path of each name, one per line (to read or include it). An unknown name
    prints one line ``mosaic recipes: error: ...`` listing the names, and exits with status 2.

    Returns:
        0 on success.
    """
    parser = argparse.ArgumentParser(
        prog="mosaic recipes",
        description="List the shipped recipes (mosaic fit --config NAME) and config pieces (stacked after a recipe: "
        "--config gossip/el; --model model/NAME, --data data/NAME; mosaic analyze --config analysis/NAME).",
    )
    parser.add_argument("names", nargs="*", help="print the path of each name instead of the table")
    args = parser.parse_args(argv)
    names = available()
    if args.names:
        for name in args.names:
            if name not in names:
                print(f"mosaic recipes: error: unknown name {name!r}; available: {', '.join(names)}", file=sys.stderr)
                raise SystemExit(2)
            print(names[name])
        return 0
    width = max(len(name) for name in names)
    recipes = [name for name, file in names.items() if file.parent == RECIPES_DIR]
    pieces = [name for name in names if name not in recipes]
    for title, group in (
        ("recipes (mosaic fit --config NAME)", recipes),
        ("pieces (--config NAME after a recipe)", pieces),
    ):
        print(f"{title}:")
        for name in group:
            print(f"  {name:<{width}}  {description(names[name])}")
            print(f"  {'':<{width}}  {names[name]}")
    return 0
