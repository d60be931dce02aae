"""Node accuracy under message loss on the bundled digits: EL (K = 1) and Mosaic (K = 8) x drop_prob.

Runs the quickstart configuration (16 nodes, alpha 0.1, s = 3, 300 rounds) for each drop_prob and K, and prints a
Markdown table of final node accuracy mean +- std over nodes. Usage:
``python benchmarks/drop_prob_digits.py [--drop 0 0.1 0.3 0.5] [--fragments 1 8] [--rounds 300]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_mosaic import MosaicGossip, MosaicModule
from lightning_mosaic.data import DigitsDataModule
from lightning_mosaic.models import MLP


def run(fragments: int, drop_prob: float, rounds: int, root: str) -> dict[str, float]:
    seed_everything(0, verbose=False)
    data = DigitsDataModule(num_nodes=16, alpha=0.1, batch_size=16, seed=0, steps_per_epoch=50)
    module = MosaicModule(MLP, 16, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    gossip = MosaicGossip(fragments=fragments, peers=3, seed=0, drop_prob=drop_prob)
    trainer = Trainer(
        max_steps=rounds,
        accelerator="cpu",
        callbacks=[gossip],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=root,
    )
    trainer.fit(module, data)
    evaluator = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return evaluator.validate(module, datamodule=data, verbose=False)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--drop", type=float, nargs="+", default=[0.0, 0.1, 0.3, 0.5])
    parser.add_argument("--fragments", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; rounds {args.rounds}")
    header = "| drop_prob | " + " | ".join(f"K = {k} node acc (std)" for k in args.fragments) + " |"
    print(header)
    print("|" + "---|" * (len(args.fragments) + 1))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        for p in args.drop:
            cells = []
            for k in args.fragments:
                m = run(k, p, args.rounds, root)
                cells.append(f"{m['val/node_acc_mean']:.4f} ({m['val/node_acc_std']:.4f})")
            print(f"| {p} | " + " | ".join(cells) + " |", flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
