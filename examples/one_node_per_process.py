"""Mosaic Learning in your own Lightning project: one process per node, a plain LightningModule, no replicas.

Each of the N processes trains one node on its own Dirichlet shard of the digits data (scikit-learn's 1,797 8x8
images) and, after every optimizer step, gossips K fragments of its parameters to s random peers through
``torch.distributed`` (gloo on CPU, NCCL on GPU). Run it on 2 CPU processes:

    python examples/one_node_per_process.py --devices 2

on 4 GPUs: ``--accelerator gpu --devices 4``; on 2 machines with 8 GPUs each, run the same command on every machine
with ``--num-machines 2 --devices 8`` and Lightning's usual ``MASTER_ADDR``, ``MASTER_PORT`` and ``NODE_RANK``
environment variables (or under torchrun / SLURM, which set them).

What makes it decentralized are three lines: ``strategy="mosaic"`` (processes like DDP, but no gradient
all-reduce; with ``use_distributed_sampler=False``, so that Lightning leaves the sampler alone), ``MosaicGossip(...)``
in the callbacks, and ``NodeShardSampler`` giving process r node r's shard.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_mosaic import MosaicGossip
from lightning_mosaic.data import NodeShardSampler, dirichlet_partition


class DigitsClassifier(pl.LightningModule):
    """An ordinary LightningModule: nothing in it knows about nodes or gossip."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        self.val_acc = MulticlassAccuracy(num_classes=10, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_acc.update(self(x), y)

    def on_validation_epoch_end(self) -> None:
        # This process's node on the shared test set; the mean over processes is the node-average accuracy.
        self.log("val/node_acc_mean", self.val_acc.compute(), sync_dist=True)
        self.val_acc.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class DigitsShards(pl.LightningDataModule):
    """Digits split over the nodes with a Dirichlet(alpha) label skew; process r trains on node r's shard."""

    def __init__(self, alpha: float = 0.5, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.alpha, self.batch_size, self.seed = alpha, batch_size, seed

    def setup(self, stage: str) -> None:
        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x / 16.0, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.int64)
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(y), generator=generator)
        test, train = order[:360], order[360:]
        self.train_set = TensorDataset(x[train], y[train])
        self.test_set = TensorDataset(x[test], y[test])
        # The same partition in every process: same labels, n = world size, same seed.
        self.partition = dirichlet_partition(y[train].numpy(), self.trainer.world_size, self.alpha, seed=self.seed)

    def train_dataloader(self) -> DataLoader:
        sampler = NodeShardSampler(self.partition, seed=self.seed)  # rank read from torch.distributed
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=2, help="processes (nodes) per machine")
    parser.add_argument("--num-machines", type=int, default=1, help="machines (Lightning's Trainer num_nodes)")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--fragments", type=int, default=8, help="K (1 = Epidemic Learning)")
    parser.add_argument("--peers", type=int, default=1, help="s, at most n - 1")
    parser.add_argument("--max-steps", type=int, default=200, help="local steps = gossip rounds")
    parser.add_argument("--out", default="runs/one_node_per_process", help="log directory")
    args = parser.parse_args()

    pl.seed_everything(0)
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_machines,
        strategy="mosaic",  # lightning_mosaic.MosaicStrategy, registered when lightning_mosaic is imported
        use_distributed_sampler=False,  # each process reads its own node's shard (NodeShardSampler)
        max_steps=args.max_steps,
        val_check_interval=50,
        check_val_every_n_epoch=None,
        log_every_n_steps=10,
        logger=CSVLogger(args.out, name=""),
        callbacks=[MosaicGossip(fragments=args.fragments, peers=args.peers, seed=0)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(DigitsClassifier(), datamodule=DigitsShards())
    if trainer.is_global_zero:
        metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
        print(f"nodes={trainer.world_size} fragments={args.fragments} peers={args.peers} metrics={metrics}")


if __name__ == "__main__":
    main()
