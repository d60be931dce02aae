"""Soak: resident memory of the ``quickstart`` recipe after 1,000 and 10,000 rounds.

Runs ``mosaic fit --config quickstart --trainer.max_steps R --trainer.val_check_interval 50`` in a fresh subprocess
through the real CLI (validation, and so checkpointing, every 50 rounds as when the results in docs/benchmarks.md
were measured; the recipe itself validates every 10; CSV logging as configured there), with one extra callback,
:class:`RSSMarks`, that records the resident set size every ``every`` rounds. Nothing in the hot path may grow with the
number of rounds: the table reports RSS at round 1,000 and at the last round, and the growth per 1,000 rounds
(least-squares slope over all marks from round 1,000 on).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from benchmarks.common import rss_bytes

REPO = Path(__file__).resolve().parents[1]


class RSSMarks(Callback):
    """Append ``{"round": r, "rss_mib": ...}`` every ``every`` optimizer steps; written to ``out`` at fit end.

    Args:
        out: JSON file to write (atomically).
        every: Rounds between marks (>= 1).
    """

    def __init__(self, out: str, every: int = 500) -> None:
        self.out, self.every, self.marks = out, every, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == 1:
            self.marks.append({"round": step, "rss_mib": rss_bytes() / 2**20})

    def on_fit_end(self, trainer, pl_module) -> None:
        from benchmarks.common import write_json_atomic

        write_json_atomic(self.out, self.marks)


def run(rounds: int = 10_000, every: int = 500, in_process: bool = False) -> dict[str, Any]:
    """Run the quickstart for ``rounds`` rounds in a subprocess (``in_process``: in this one, for the smoke test);
    return the RSS marks and their summary."""
    with tempfile.TemporaryDirectory(prefix="mosaic-soak-") as tmp:
        out = Path(tmp) / "marks.json"
        init_args = {"out": str(out), "every": every}
        callback = json.dumps({"class_path": "benchmarks.soak.RSSMarks", "init_args": init_args})
        args = [
            "fit",
            "--config",
            "quickstart",
            "--trainer.max_steps",
            str(rounds),
            "--trainer.val_check_interval",
            "50",
            "--trainer.logger.init_args.save_dir",
            str(Path(tmp) / "runs"),
            "--trainer.enable_progress_bar",
            "false",
            f"--trainer.callbacks+={callback}",
        ]
        if in_process:
            from lightning_mosaic.cli import main

            main(args)
        else:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
            cmd = [sys.executable, "-m", "lightning_mosaic.cli", *args]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=env)
            if proc.returncode != 0 or not out.is_file():
                raise RuntimeError(f"quickstart soak run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        marks = json.loads(out.read_text())
    first_k = min(1000, rounds)
    at_first = next(m for m in marks if m["round"] >= first_k)
    tail = [m for m in marks if m["round"] >= first_k]
    slope = 0.0
    if len(tail) >= 2:
        xs = [m["round"] for m in tail]
        ys = [m["rss_mib"] for m in tail]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    result = {
        "rounds": rounds,
        "rss_mib_at_round_1000": at_first["rss_mib"],
        "mark_1000_round": at_first["round"],
        "rss_mib_at_last_round": marks[-1]["rss_mib"],
        "last_round": marks[-1]["round"],
        "growth_mib_per_1000_rounds": 1000 * slope,
        "marks": marks,
    }
    print(
        f"  soak: RSS {result['rss_mib_at_round_1000']:.1f} MiB at round {at_first['round']}, "
        f"{result['rss_mib_at_last_round']:.1f} MiB at round {marks[-1]['round']} "
        f"({result['growth_mib_per_1000_rounds']:+.3f} MiB / 1,000 rounds)",
        flush=True,
    )
    return result
