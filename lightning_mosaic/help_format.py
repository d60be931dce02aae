"""Help text for a terminal: Sphinx markup rendered plainly, long lists of known subclasses cut short.

The formatter of every ``mosaic`` parser (``fit`` and the other Lightning subcommands, ``analyze``). jsonargparse
only, no Lightning: ``mosaic analyze`` uses it without importing Lightning.
"""

from __future__ import annotations

import argparse
import re

from jsonargparse import DefaultHelpFormatter

# Sphinx roles (:class:`~a.B`, :func:`f`, :ref:`text <target>`), links (`text <url>`_) and literals (``x``).
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`(~?)([^`<]*?)\s*(?:<([^`>]*)>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<([^`>]+)>`__?")
_LITERAL = re.compile(r"``(.+?)``", re.S)
_DEFAULT_ROLE = re.compile(r"(?<![`\w])`([^`\s][^`]*?)`(?![`\w])")
_KNOWN_SUBCLASSES = re.compile(r", known subclasses: (.*)\)$", re.S)
#: A list of known subclasses longer than this is cut to the classes of this package.
MAX_KNOWN_SUBCLASSES = 32


def plain_text(text: str) -> str:
    """``text`` with Sphinx markup rendered plainly for a terminal.

    ``:class:`~x.Y``` becomes ``Y``, ``:func:`x.f``` becomes ``x.f``, ``:ref:`text <target>``` becomes ``text``,
    ```text <url>`_`` becomes ``text (url)``, and a ````literal```` or ```text``` loses its backticks.

    >>> plain_text("a :class:`~torch.nn.Module` or :func:`torch.func.vmap`, default ``'auto'``, `N` steps")
    "a Module or torch.func.vmap, default 'auto', N steps"
    """

    def role(match: re.Match) -> str:
        shown = match.group(2) or match.group(3) or ""
        return shown.rsplit(".", 1)[-1] if match.group(1) else shown

    text = _ROLE.sub(role, text)
    text = _LINK.sub(r"\1 (\2)", text)
    return _DEFAULT_ROLE.sub(r"\1", _LITERAL.sub(r"\1", text))


def short_subclass_list(help_text: str, limit: int = MAX_KNOWN_SUBCLASSES) -> str:
    """``help_text`` with a ``known subclasses: ...`` list of more than ``limit`` classes cut to this package's.

    The cut list ends with how many were left out and that any importable class path is accepted.

    >>> short_subclass_list("x (type: Module, known subclasses: torch.nn.Linear, lightning_mosaic.models.MLP)", 1)
    'x (type: Module, known subclasses: lightning_mosaic.models.MLP, and 1 more: any importable class path works)'
    """
    match = _KNOWN_SUBCLASSES.search(help_text)
    if match is None:
        return help_text
    paths = [path.strip() for path in match.group(1).split(",")]
    if len(paths) <= limit:
        return help_text
    own = [path for path in paths if path.split(".")[0] == "lightning_mosaic"]
    rest = f"and {len(paths) - len(own)} more: any importable class path works"
    listed = ", ".join([*own, rest]) if own else rest
    return help_text[: match.start()] + f", known subclasses: {listed})"


class MosaicHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help formatter with plain text (:func:`plain_text`) and short subclass lists
    (:func:`short_subclass_list`).

    It overrides the three ``argparse.HelpFormatter`` methods through which every argument's help, description and
    section title passes before it is wrapped; argparse has no public hook for them.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        return short_subclass_list(plain_text(super()._get_help_string(action)))

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain_text(text))

    def start_section(self, heading: str | None) -> None:
        super().start_section(plain_text(heading) if heading else heading)
