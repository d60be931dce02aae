"""One process of an externally launched multi-process run (the way torchrun and SLURM launch), for
``tests/test_distributed.py``: rank and world come from RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* in the environment.

It trains 4 digits nodes (MosaicModule) over the processes with MosaicGossip, and can inject faults on rank 1:
different gossip settings, dying (``os._exit``) or hanging at a given step; or leave Lightning's DistributedSampler
injection on (refused by the strategy).
"""

from __future__ import annotations

import argparse
import os
import time

import lightning.pytorch as pl

from lightning_mosaic import MosaicGossip, MosaicModule
from lightning_mosaic.data import DigitsDataModule
from lightning_mosaic.distributed.strategy import MosaicStrategy
from lightning_mosaic.models import MLP


class Fault(pl.Callback):
    """Make rank 1 die or hang when it starts local step ``step``."""

    def __init__(self, kind: str, step: int) -> None:
        self.kind, self.step = kind, step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_rank != 1 or trainer.global_step != self.step:
            return
        if self.kind == "die":
            os._exit(3)
        if self.kind == "hang":
            time.sleep(3600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fragments", type=int, default=4)
    parser.add_argument("--fragments-on-rank-1", type=int, default=None)
    parser.add_argument("--fault", choices=("none", "die", "hang"), default="none")
    parser.add_argument("--fault-step", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--use-distributed-sampler", action="store_true", help="leave Lightning's default on")
    args = parser.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    fragments = args.fragments_on_rank_1 if rank == 1 and args.fragments_on_rank_1 else args.fragments
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world,
        strategy=MosaicStrategy(timeout=args.timeout),
        use_distributed_sampler=args.use_distributed_sampler,
        max_steps=12,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[MosaicGossip(fragments=fragments, peers=1, seed=0), Fault(args.fault, args.fault_step)],
    )
    module = MosaicModule(MLP(), num_nodes=4, seed=0)
    trainer.fit(module, datamodule=DigitsDataModule(num_nodes=4, batch_size=8, seed=0))
    print(f"rank {rank} finished {trainer.global_step} steps", flush=True)


if __name__ == "__main__":
    main()
