"""Churn and stragglers: seeded, stateless fault schedules, and nodes that really skip training and gossip."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from lightning_mosaic import MosaicGossip, MosaicModule
from lightning_mosaic.data import DigitsDataModule
from lightning_mosaic.gossip.faults import NodeFaults, read_churn_trace
from lightning_mosaic.models import MLP


def test_fault_schedule_is_seeded_stateless_and_has_the_requested_rates():
    faults = NodeFaults(1000, availability=0.8, straggler_prob=0.1, seed=5)
    first = [faults.offline(r) for r in range(1, 6)]
    again = NodeFaults(1000, availability=0.8, straggler_prob=0.1, seed=5)
    assert all(torch.equal(a, again.offline(r)) for r, a in zip(range(1, 6), first))
    assert not torch.equal(first[0], first[1])  # a fresh draw every round
    assert not torch.equal(first[0], NodeFaults(1000, availability=0.8, seed=6).offline(1))
    offline_rate = torch.stack(first).float().mean().item()
    assert 0.17 < offline_rate < 0.23
    idle = faults.idle(step=3, round_=2)
    assert torch.all(idle >= faults.offline(2))  # offline nodes never train
    assert 0.22 < idle.float().mean().item() < 0.34  # 1 - 0.8 * 0.9 = 0.28
    assert not NodeFaults(10).active and not NodeFaults(10).offline(1).any()


def test_churn_trace(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("# node 2 is away for rounds 3-5\nnode,first_round,last_round\n2,3,5\n0,1,1\n")
    assert read_churn_trace(trace, 4) == [(2, 3, 5), (0, 1, 1)]
    faults = NodeFaults(4, churn_trace=trace)
    assert faults.offline(1).tolist() == [True, False, False, False]
    assert [faults.offline(r)[2].item() for r in range(1, 7)] == [False, False, True, True, True, False]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("node,start,end\n", r"trace.csv:1: the churn trace must start with the header node,first_round,last_round"),
        ("node,first_round,last_round\n1,2\n", r"trace.csv:2: expected 3 fields"),
        ("node,first_round,last_round\n1,x,3\n", r"trace.csv:2: .* must be integers"),
        ("node,first_round,last_round\n\n7,1,3\n", r"trace.csv:3: node must be in \[0, 4\), got 7"),
        ("node,first_round,last_round\n1,4,3\n", r"trace.csv:2: need 1 <= first_round <= last_round, got 4..3"),
    ],
)
def test_bad_churn_trace_names_file_and_line(tmp_path, text, match):
    trace = tmp_path / "trace.csv"
    trace.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_churn_trace(trace, 4)


def test_bad_fault_arguments_are_refused_at_construction(tmp_path):
    with pytest.raises(ValueError, match="availability must be a probability in"):
        MosaicGossip(availability=1.5)
    with pytest.raises(ValueError, match="straggler_prob must be a probability in"):
        MosaicGossip(straggler_prob=-0.1)
    with pytest.raises(FileNotFoundError, match="churn_trace .*missing.csv does not exist"):
        MosaicGossip(churn_trace=str(tmp_path / "missing.csv"))


class Snapshot(Callback):
    """Copies of the node parameters at batch start (before the local step) and at batch end."""

    def __init__(self) -> None:
        self.start: list[torch.Tensor] = []
        self.end: list[torch.Tensor] = []
        self.idle: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start.append(pl_module.gossip_parameters.detach().clone())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.idle.append(pl_module.frozen_nodes.clone())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end.append(pl_module.gossip_parameters.detach().clone())


def test_offline_nodes_and_stragglers_skip_training_and_offline_nodes_skip_gossip(tmp_path):
    before_gossip, after_gossip = Snapshot(), Snapshot()
    gossip = MosaicGossip(fragments=4, peers=3, seed=1, availability=0.7, straggler_prob=0.2)
    trainer = Trainer(
        max_steps=8,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[before_gossip, gossip, after_gossip],  # callbacks run in this order
    )
    module = MosaicModule(MLP, 8, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    trainer.fit(module, DigitsDataModule(num_nodes=8, alpha=0.5, batch_size=8))
    faults = NodeFaults(8, availability=0.7, straggler_prob=0.2, seed=1)
    for step in range(8):
        idle = faults.idle(step + 1, step + 1)
        offline = faults.offline(step + 1)
        assert torch.equal(before_gossip.idle[step], idle)
        trained = (before_gossip.end[step] != before_gossip.start[step]).any(dim=1)
        assert torch.equal(trained, ~idle), step  # idle nodes kept their parameters (and momentum, below)
        received = (after_gossip.end[step] != before_gossip.end[step]).any(dim=1)
        assert not received[offline].any(), step  # offline nodes received nothing
    assert any(i.any() for i in before_gossip.idle) and not all(i.all() for i in before_gossip.idle)


def test_faults_need_a_mosaic_module():
    from lightning.pytorch import LightningModule

    class OneNode(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

    with pytest.raises(TypeError, match="need a lightning_mosaic.MosaicModule"):
        MosaicGossip(availability=0.9).attach(OneNode(), world_size=2)
