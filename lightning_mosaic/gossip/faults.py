"""Node churn and stragglers: which nodes are offline in a round, and which skip a local step. Pure tensor code.

Both are stateless functions of (seed, round) and (seed, step), drawn from generators we own and seeded with
:func:`~lightning_mosaic.seeding.derive_seed`, so a resumed run sees exactly the same faults and the faults
do not depend on the number of processes.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import Tensor

from lightning_mosaic._validation import check_int, check_probability
from lightning_mosaic.seeding import CHURN_STREAM, STRAGGLER_STREAM, derive_seed


def read_churn_trace(path: str | Path, num_nodes: int) -> list[tuple[int, int, int]]:
    """Read offline intervals from a CSV file with the header ``node,first_round,last_round``.

    Each row takes node ``node`` (in ``[0, n)``) offline for rounds ``first_round`` to ``last_round`` inclusive
    (rounds count from 1, as ``gossip/round``). Blank lines and lines starting with ``#`` are ignored.

    Args:
        path: The CSV file.
        num_nodes: n, to check the node indices.

    Returns:
        The intervals as ``(node, first_round, last_round)`` tuples, in file order.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: Naming the file and line, for a wrong header, a wrong number of fields, a non-integer, a node
            outside ``[0, n)``, or an interval that is empty or starts before round 1.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"churn_trace {path} does not exist")
    intervals: list[tuple[int, int, int]] = []
    with path.open(newline="") as handle:
        rows = [(number, row) for number, row in enumerate(csv.reader(handle), start=1)]
    rows = [(number, row) for number, row in rows if row and not row[0].lstrip().startswith("#")]
    expected = ["node", "first_round", "last_round"]
    if not rows or [field.strip() for field in rows[0][1]] != expected:
        got = rows[0][1] if rows else "an empty file"
        line = rows[0][0] if rows else 1
        raise ValueError(f"{path}:{line}: the churn trace must start with the header {','.join(expected)}, got {got}")
    for number, row in rows[1:]:
        if len(row) != 3:
            raise ValueError(f"{path}:{number}: expected 3 fields node,first_round,last_round, got {len(row)}: {row}")
        try:
            node, first, last = (int(field) for field in row)
        except ValueError:
            raise ValueError(f"{path}:{number}: node, first_round and last_round must be integers, got {row}") from None
        if not 0 <= node < num_nodes:
            raise ValueError(f"{path}:{number}: node must be in [0, {num_nodes}), got {node}")
        if not 1 <= first <= last:
            raise ValueError(f"{path}:{number}: need 1 <= first_round <= last_round, got {first}..{last}")
        intervals.append((node, first, last))
    return intervals


def _uniform(seed: int, stream: int, index: int, num_nodes: int) -> Tensor:
    generator = torch.Generator().manual_seed(derive_seed(seed, stream, index))
    return torch.rand(num_nodes, generator=generator)


class NodeFaults:
    """Seeded fault schedule of n nodes: churn (offline for whole rounds) and stragglers (skipped local steps).

    A node offline in round r neither trains in the local steps that lead to round r, nor sends, nor receives in it
    (the gossip isolates it as it isolates a non-finite node). A straggler skips one local step (its parameters and
    optimizer state stay as they were) but gossips as usual.

    Args:
        num_nodes: n >= 1.
        availability: Probability in [0, 1] that a node is online in a round, independently per node and round
            (default 1: no churn).
        churn_trace: Optional CSV of offline intervals (see :func:`read_churn_trace`), applied on top of
            ``availability``.
        straggler_prob: Probability in [0, 1] that a node skips a given local step (default 0).
        seed: Seed of both random streams.

    Raises:
        ValueError: For a probability outside [0, 1] or a bad trace file (naming the file and line).
        FileNotFoundError: If ``churn_trace`` does not exist.
    """

    def __init__(
        self,
        num_nodes: int,
        availability: float = 1.0,
        churn_trace: str | Path | None = None,
        straggler_prob: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.num_nodes = check_int("num_nodes", num_nodes, 1)
        self.availability = check_probability("availability", availability)
        self.straggler_prob = check_probability("straggler_prob", straggler_prob)
        self.seed = seed
        self.trace = [] if churn_trace is None else read_churn_trace(churn_trace, num_nodes)
        self._last_offline: tuple[int, Tensor] | None = None  # the callback asks for one round several times

    @property
    def active(self) -> bool:
        """Whether any fault is configured."""
        return self.availability < 1.0 or bool(self.trace) or self.straggler_prob > 0.0

    def offline(self, round_: int) -> Tensor:
        """``(n,)`` bool mask of the nodes offline in round ``round_`` (rounds count from 1)."""
        if self._last_offline is not None and self._last_offline[0] == round_:
            return self._last_offline[1].clone()
        mask = torch.zeros(self.num_nodes, dtype=torch.bool)
        if self.availability < 1.0:
            mask |= _uniform(self.seed, CHURN_STREAM, round_, self.num_nodes) >= self.availability
        for node, first, last in self.trace:
            if first <= round_ <= last:
                mask[node] = True
        self._last_offline = (round_, mask)
        return mask.clone()

    def idle(self, step: int, round_: int) -> Tensor:
        """``(n,)`` bool mask of the nodes that do not train in local step ``step`` (counted from 1), which leads to
        round ``round_``: the nodes offline in that round and the stragglers of that step."""
        mask = self.offline(round_)
        if self.straggler_prob > 0.0:
            mask |= _uniform(self.seed, STRAGGLER_STREAM, step, self.num_nodes) < self.straggler_prob
        return mask
