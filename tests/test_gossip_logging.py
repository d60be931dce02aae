"""What MosaicGossip logs and when: only the steps whose logged values reach the loggers or the final
``callback_metrics`` compute them, and those get exactly the values of logging every round."""

from __future__ import annotations

import csv

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger

from lightning_mosaic import MosaicGossip, MosaicModule
from lightning_mosaic.data import DigitsDataModule
from lightning_mosaic.distributed import global_consensus_distance
from lightning_mosaic.metrics import ConsensusDistance
from lightning_mosaic.models import MLP


class Reference(Callback):
    """Placed after MosaicGossip: the consensus distance and round counter after every step's round."""

    def __init__(self, gossip: MosaicGossip, stop_at: int | None = None) -> None:
        self.gossip, self.stop_at, self.rounds = gossip, stop_at, {}

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        distance = global_consensus_distance(pl_module.gossip_parameters, pl_module.num_nodes)
        self.rounds[trainer.global_step] = (self.gossip.rounds, float(distance.float()))
        if trainer.global_step == self.stop_at:
            trainer.should_stop = True  # after MosaicGossip's hook: this step becomes a logging step


def fit(tmp_path, gossip: MosaicGossip, max_steps: int, log_every: int, stop_at: int | None = None, module=None):
    reference = Reference(gossip, stop_at)
    trainer = Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=log_every,
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[gossip, reference],
    )
    trainer.fit(module or MosaicModule(MLP, 8), DigitsDataModule(num_nodes=8, alpha=0.5, batch_size=8))
    with open(trainer.logger.log_dir + "/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("gossip/round")]
    # CSVLogger's "step" counts optimizer steps from 0: the row of global step g has step g - 1
    logged = {int(r["step"]) + 1: (int(float(r["gossip/round"])), float(r["gossip/consensus_distance"])) for r in rows}
    return trainer, reference.rounds, logged


def test_logged_rounds_and_final_metrics_equal_every_round_logging(tmp_path):
    trainer, reference, logged = fit(tmp_path, MosaicGossip(fragments=4, peers=2), max_steps=13, log_every=5)
    assert sorted(logged) == [5, 10]
    for step, (round_, distance) in logged.items():
        assert round_ == reference[step][0] == step
        assert distance == pytest.approx(reference[step][1], rel=1e-6)
    final = trainer.callback_metrics
    assert float(final["gossip/round"]) == 13  # the last step is computed although it is not a logging step
    assert float(final["gossip/consensus_distance"]) == pytest.approx(reference[13][1], rel=1e-6)


def test_a_callback_stopping_the_fit_after_the_gossip_gets_that_rounds_values(tmp_path):
    trainer, reference, logged = fit(tmp_path, MosaicGossip(fragments=4, peers=2), 40, log_every=5, stop_at=7)
    assert trainer.global_step == 7 and sorted(logged) == [5, 7]
    assert logged[7][0] == 7 and logged[7][1] == pytest.approx(reference[7][1], rel=1e-6)


def test_with_every_n_steps_the_logging_steps_between_rounds_show_the_last_round(tmp_path):
    _, reference, logged = fit(tmp_path, MosaicGossip(fragments=4, peers=2, every_n_steps=3), 14, log_every=2)
    assert sorted(logged) == [4, 6, 8, 10, 12, 14]
    for step, (round_, distance) in logged.items():
        last_round_step = 3 * (step // 3)
        assert round_ == step // 3
        assert distance == pytest.approx(reference[last_round_step][1], rel=1e-6)


def test_a_subclass_overriding_on_train_batch_end_still_logs(tmp_path):
    class Overriding(MosaicModule):
        def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
            pass

    trainer, reference, logged = fit(
        tmp_path, MosaicGossip(fragments=4, peers=2), 12, log_every=4, module=Overriding(MLP, 8)
    )
    assert sorted(logged) == [4, 8, 12]
    assert all(logged[s][1] == pytest.approx(reference[s][1], rel=1e-6) for s in logged)


def test_consensus_distance_with_workspace_is_bit_identical():
    distance = ConsensusDistance()
    gen = torch.Generator().manual_seed(0)
    for shape in [(16, 5000), (16, 5000), (3, 7), (943, 300), (5, 1)]:
        x = torch.randn(*shape, generator=gen) * 10 ** torch.randint(-3, 4, (1,), generator=gen).item()
        assert torch.equal(distance(x, shape[0]), global_consensus_distance(x, shape[0]))
        rows = x[1:] if shape[0] > 1 else x
        assert torch.equal(distance(rows, rows.shape[0]), global_consensus_distance(rows, rows.shape[0]))
    x64 = torch.randn(4, 9, dtype=torch.float64, generator=gen)
    assert torch.equal(distance(x64, 4), global_consensus_distance(x64, 4))


def test_nonfinite_guard_finds_nan_and_inf_and_ignores_overflowing_sums():
    gossip = MosaicGossip()
    rows = torch.zeros(5, 4)
    rows[1] = 3e38  # finite values whose sum overflows to inf: not a non-finite node
    rows[2, 3] = float("nan")
    rows[3, 0], rows[3, 1] = float("inf"), float("-inf")  # sums to NaN
    rows[4, 2] = float("-inf")
    mask, any_bad = gossip._nonfinite(rows, 5)
    assert mask.tolist() == [False, False, True, True, True] and any_bad is True
    mask, any_bad = gossip._nonfinite(rows[:2], 2)
    assert mask.tolist() == [False, False] and any_bad is False
