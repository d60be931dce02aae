"""Consensus distance measured in real training: read the ``metrics.csv`` files that ``mosaic fit`` writes.

``MosaicGossip`` logs ``gossip/consensus_distance`` (after mixing) and ``gossip/round`` every round; Lightning's
``CSVLogger`` writes a row every ``trainer.log_every_n_steps`` steps (run with ``--trainer.log_every_n_steps 1`` for
every round).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np

CONSENSUS_COLUMN = "gossip/consensus_distance"
ROUND_COLUMN = "gossip/round"


def read_consensus_log(path: str | PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Rounds and consensus distances of one training run.

    Args:
        path: A ``metrics.csv`` written by Lightning's ``CSVLogger`` during ``mosaic fit``.

    Returns:
        ``(rounds, consensus)``, two ``(T,)`` float64 arrays; rows without a consensus value or a round skipped.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file has no ``gossip/consensus_distance`` or ``gossip/round`` column, a value on line L is
            not a number, or no row has a value.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log {path} does not exist")
    rounds, values = [], []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in (CONSENSUS_COLUMN, ROUND_COLUMN) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"training log {path} has no column {missing[0]!r} (columns: {reader.fieldnames})")
        for row in reader:
            if not row[CONSENSUS_COLUMN] or not row[ROUND_COLUMN]:
                continue  # other metrics' rows (validation rows repeat the last consensus value without a round)
            try:
                rounds.append(float(row[ROUND_COLUMN]))
                values.append(float(row[CONSENSUS_COLUMN]))
            except ValueError:
                raise ValueError(
                    f"training log {path}, line {reader.line_num}: {row[ROUND_COLUMN]!r}, "
                    f"{row[CONSENSUS_COLUMN]!r} is not a number"
                ) from None
    if not values:
        raise ValueError(f"training log {path} has no {CONSENSUS_COLUMN} value")
    return np.asarray(rounds), np.asarray(values)


def stack_consensus_logs(paths: Sequence[str | PathLike]) -> tuple[np.ndarray, np.ndarray]:
    """Consensus distances of several runs (seeds) of one configuration, on the rounds they all logged.

    Returns:
        ``(rounds, values)``: ``(T,)`` rounds and ``(len(paths), T)`` consensus distances.

    Raises:
        ValueError: If ``paths`` is empty or the runs share no logged round (and see :func:`read_consensus_log`).
    """
    if not paths:
        raise ValueError("training_logs: each label needs at least one metrics.csv path, got an empty list")
    logs = [read_consensus_log(p) for p in paths]
    common = logs[0][0]
    for rounds, _ in logs[1:]:
        common = np.intersect1d(common, rounds)
    if common.size == 0:
        raise ValueError(f"the training logs {list(map(str, paths))} share no logged round")
    values = np.stack([v[np.searchsorted(r, common)] for r, v in logs])
    return common, values
