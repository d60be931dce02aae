"""RatingModule: matrix factorization on the real MovieLens 100K, 16 nodes, Mosaic Learning (K = 8), real Trainer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_mosaic import MosaicGossip
from lightning_mosaic.callbacks import MosaicSummary
from lightning_mosaic.data import MovieLensDataModule
from lightning_mosaic.models import MatrixFactorization
from lightning_mosaic.tasks import RatingModule
from lightning_mosaic.tasks.rating import round_to_grid


def test_round_to_grid_and_rating_accuracy():
    values = torch.tensor([-3.0, 0.74, 0.75, 1.49, 2.5, 4.6, 9.0])
    assert round_to_grid(values, (1.0, 5.0, 1.0)).tolist() == [1.0, 1.0, 1.0, 1.0, 3.0, 5.0, 5.0]  # 2.5 rounds up
    assert round_to_grid(values, (0.5, 5.0, 0.5)).tolist() == [0.5, 0.5, 1.0, 1.5, 2.5, 4.5, 5.0]
    module = RatingModule(MatrixFactorization(3, 3), 2, rating_grid=(1, 5, 1))
    outputs = torch.tensor([[0.2, 3.4, 4.4], [5.7, 2.5, 3.49]])
    targets = torch.tensor([[1.0, 3.0, 4.0], [5.0, 2.0, 3.0]])
    assert module.per_sample_correct(outputs, targets).tolist() == [[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]]
    torch.testing.assert_close(module.per_sample_loss(outputs, targets), (outputs - targets) ** 2)
    with pytest.raises(ValueError, match="min < max"):
        RatingModule(MatrixFactorization(3, 3), 2, rating_grid=(5, 1, 1))
    with pytest.raises(RuntimeError, match="rating grid is unknown"):
        RatingModule(MatrixFactorization(3, 3), 2).per_sample_correct(outputs, targets)


@pytest.fixture(scope="module")
def movielens_run(movielens100k_dir: Path):
    """60 rounds of Mosaic Learning (n = 16, K = 8, s = 3) on MovieLens 100K, validated once at the end.

    Runs with one intra-op thread: on the shared 2-core test machine the same run took 11 s with one thread and 66 s
    with two (identical numbers), the (16, 55125) elementwise work being too small to split.
    """
    threads = torch.get_num_threads()  # module scope: the function-scoped one_torch_thread fixture does not fit
    torch.set_num_threads(1)
    data = MovieLensDataModule(movielens100k_dir, num_nodes=16, batch_size=256, seed=0)
    module = RatingModule(
        lambda: MatrixFactorization(943, 1682, global_mean=3.5),
        num_nodes=16,
        optimizer=lambda params: torch.optim.SGD(params, lr=8.0),
        seed=0,
    )
    trainer = Trainer(
        max_steps=60,
        callbacks=[MosaicGossip(fragments=8, peers=3, seed=0), summary := MosaicSummary(write=False)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=60,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
    )
    try:
        trainer.fit(module, data)
    finally:
        torch.set_num_threads(threads)
    assert summary.validated_step == 60
    results = {name: float(value) for name, value in trainer.callback_metrics.items()}
    return data, module, results


def test_mosaic_run_learns_below_the_global_mean_baseline(movielens_run):
    data, _, results = movielens_run
    baseline = data.global_mean_baseline()  # same split, same test ratings
    assert results["val/node_rmse_mean"] < baseline["rmse"] - 0.08, (results, baseline)
    assert results["val/avg_model_rmse"] < baseline["rmse"] - 0.08
    assert results["val/node_mae_mean"] < baseline["mae"]
    assert results["val/node_rating_acc_mean"] > baseline["rating_acc"]
    assert 0 <= results["val/node_rmse_std"] < 0.05
    assert results["gossip/consensus_distance"] > 0


def test_logged_metrics_equal_a_direct_computation(movielens_run):
    data, module, results = movielens_run
    test = data.test_dataset
    with torch.no_grad():
        predicted = module(test.pairs, shared_input=True)  # (n, N_test): every node on every test rating
        averaged = module.replicas.forward_average(test.pairs)
    error = predicted.double() - test.ratings.double()
    node_rmse = error.square().mean(dim=1).sqrt()
    assert results["val/node_rmse_mean"] == pytest.approx(float(node_rmse.mean()), rel=1e-5)
    assert results["val/node_rmse_std"] == pytest.approx(float(node_rmse.std(correction=0)), rel=1e-3, abs=1e-7)
    assert results["val/node_mae_mean"] == pytest.approx(float(error.abs().mean()), rel=1e-5)
    avg_rmse = math.sqrt(float((averaged.double() - test.ratings.double()).square().mean()))
    assert results["val/avg_model_rmse"] == pytest.approx(avg_rmse, rel=1e-5)
    rounded = round_to_grid(predicted, data.rating_grid)
    assert results["val/node_rating_acc_mean"] == pytest.approx(float((rounded == test.ratings).double().mean()))
    assert results["val/loss"] == pytest.approx(float(error.square().mean()), rel=1e-5)


def test_model_and_data_sizes_must_match(movielens100k_dir: Path):
    data = MovieLensDataModule(movielens100k_dir, num_nodes=2)
    module = RatingModule(MatrixFactorization(900, 1682), 2)
    trainer = Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="the model has num_users=900 but the datamodule MovieLensDataModule has 943"):
        trainer.fit(module, data)
