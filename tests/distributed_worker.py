"""One process of an externally launched multi-process run (the way torchrun and SLURM launch), for
``tests/test_distributed.py``: rank and world come from RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* in the environment.

It trains 4 digits nodes (MosaicModule) over the processes with MosaicGossip, and can inject faults on rank 1:
different gossip settings, dying (``os._exit``) or hanging at a given step; or leave Lightning's DistributedSampler
injection on (refused by the strategy). With ``--lightning-module OUT`` the nodes are a user's LightningModule
(:class:`DigitsClassifier`, :func:`lightning_module_run`), and every rank saves its node rows and the final
validation metrics under ``OUT``; with ``--gradients OUT`` (:func:`gradient_run`) every rank saves its
gradients of every step, made with the joint backward and then per node.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

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


class DigitsClassifier(pl.LightningModule):
    """A user's LightningModule (BatchNorm, a torchmetrics metric, logs in steps), for 8x8 digits ``(B, 1, 8, 8)``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
        self.val_acc = MulticlassAccuracy(num_classes=10, average="micro")

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.val_acc.update(logits, y)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", self.val_acc)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


def quiet_trainer(world: int, timeout: float = 60.0, **kwargs) -> pl.Trainer:
    """A Trainer on ``world`` CPU processes (MosaicStrategy when several), without logger, bars or summaries."""
    options = dict(
        accelerator="cpu",
        devices=world,
        strategy=MosaicStrategy(timeout=timeout) if world > 1 else "auto",
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**options, **kwargs})


def lightning_module_run(world: int, out: Path) -> dict[str, float]:
    """8 steps of 4 nodes of :class:`DigitsClassifier` over ``world`` processes, then one validation; saves this
    rank's node rows (``rows{rank}.pt``) and returns the validation metrics and, prefixed ``fit/``, the fit's last
    ``callback_metrics`` of training (the last step's; equal on every rank)."""
    trainer = quiet_trainer(
        world, max_steps=8, limit_val_batches=0, callbacks=[MosaicGossip(fragments=2, peers=1, seed=0)]
    )
    # Each process builds the user's model with its own weights: every node must start from rank 0's (seed 0, as
    # in the single-process run), which MosaicModule broadcasts.
    torch.manual_seed(int(os.environ.get("RANK", "0")))
    module = MosaicModule(DigitsClassifier(), num_nodes=4, seed=0)
    data = DigitsDataModule(num_nodes=4, batch_size=8, seed=0, steps_per_epoch=4)
    trainer.fit(module, datamodule=data)
    fitted = {f"fit/{k}": float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train")}
    evaluator = quiet_trainer(world)
    (metrics,) = evaluator.validate(module, datamodule=data, verbose=False)
    torch.save(module.gossip_parameters.detach().clone(), out / f"rows{trainer.global_rank}.pt")
    return {**fitted, **{k: float(v) for k, v in metrics.items()}}


class GradientRecorder(pl.Callback):
    """Keeps a copy of this process's ``(m, d)`` gradient before every optimizer step."""

    def __init__(self) -> None:
        self.grads: list[torch.Tensor] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        self.grads.append(pl_module.gossip_parameters.grad.detach().clone())


def gradient_run(world: int, out: Path, backward_chunk: str) -> None:
    """4 steps (accumulating 2 batches each, clipped) of 4 digits nodes on the loop path over ``world`` processes
    with ``backward_chunk``; saves this rank's gradients of every step (``grads_{backward_chunk}{rank}.pt``)."""
    recorder = GradientRecorder()
    trainer = quiet_trainer(
        world,
        max_steps=4,
        limit_val_batches=0,
        accumulate_grad_batches=2,
        gradient_clip_val=0.5,
        callbacks=[MosaicGossip(fragments=2, peers=1, seed=0), recorder],
    )
    module = MosaicModule(MLP, num_nodes=4, seed=0, execution="loop", backward_chunk=backward_chunk)
    trainer.fit(module, datamodule=DigitsDataModule(num_nodes=4, batch_size=8, seed=0))
    torch.save(recorder.grads, out / f"grads_{backward_chunk}{trainer.global_rank}.pt")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fragments", type=int, default=4)
    parser.add_argument("--fragments-on-rank-1", type=int, default=None)
    parser.add_argument("--fault", choices=("none", "die", "hang"), default="none")
    parser.add_argument("--fault-step", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--use-distributed-sampler", action="store_true", help="leave Lightning's default on")
    parser.add_argument("--lightning-module", type=Path, default=None, help="run lightning_module_run, save here")
    parser.add_argument("--gradients", type=Path, default=None, help="run gradient_run (all, then auto), save here")
    args = parser.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if args.gradients is not None:
        for backward_chunk in ("all", "auto"):  # the joint backward, then per node, in the same processes
            gradient_run(world, args.gradients, backward_chunk)
        return
    if args.lightning_module is not None:
        metrics = lightning_module_run(world, args.lightning_module)
        torch.save(metrics, args.lightning_module / f"metrics{rank}.pt")
        return
    fragments = args.fragments_on_rank_1 if rank == 1 and args.fragments_on_rank_1 else args.fragments
    trainer = quiet_trainer(
        world,
        args.timeout,
        use_distributed_sampler=args.use_distributed_sampler,
        max_steps=12,
        limit_val_batches=0,
        callbacks=[MosaicGossip(fragments=fragments, peers=1, seed=0), Fault(args.fault, args.fault_step)],
    )
    module = MosaicModule(MLP(), num_nodes=4, seed=0)
    trainer.fit(module, datamodule=DigitsDataModule(num_nodes=4, batch_size=8, seed=0))
    print(f"rank {rank} finished {trainer.global_step} steps", flush=True)


if __name__ == "__main__":
    main()
