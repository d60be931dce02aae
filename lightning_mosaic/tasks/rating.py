"""Rating prediction (MovieLens): MSE training, RMSE / MAE / rating accuracy per node and for the averaged model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_mosaic.metrics import NodeMean
from lightning_mosaic.module import MosaicModule


def round_to_grid(values: Tensor, grid: tuple[float, float, float]) -> Tensor:
    """Round predicted ratings to the nearest grid value, clamped to ``[min, max]``.

    Args:
        values: Predicted ratings in stars, any shape.
        grid: ``(min, max, step)``, e.g. ``(1, 5, 1)`` or ``(0.5, 5, 0.5)``.

    Returns:
        Same shape as ``values``: ``clamp(min + step * floor((values - min) / step + 1/2), min, max)`` (halfway
        values round up, e.g. 2.5 -> 3 on the whole-star grid).
    """
    low, high, step = grid
    return (low + step * torch.floor((values - low) / step + 0.5)).clamp(low, high)


class RatingModule(MosaicModule):
    """:class:`~lightning_mosaic.MosaicModule` for rating prediction (matrix factorization on MovieLens).

    The per-node model maps ``(B, 2)`` (user, item) index pairs to ``(B,)`` predicted ratings (e.g.
    :class:`~lightning_mosaic.models.MatrixFactorization`); targets are float ratings in stars. Training minimizes
    each node's mean squared error (the sum over nodes is back-propagated, as in MosaicModule).

    Node-level evaluation, as the paper's node-level metrics (Mosaic Learning, arXiv 2602.04352, Section 5): every
    node's model predicts *all* test ratings, of all users, not only those of its own users. A node trains the
    embeddings of its own users only; the other users' embeddings reach it through gossip, so these scores measure
    how far knowledge has mixed, which is what the comparison of K values is about (a node scored on its own users
    only would measure local fit, and would not change with the gossip). The averaged model ``x_bar`` is scored on
    the same ratings.

    Metrics (``val/`` and ``test/``), each over the whole evaluation set:

    - ``node_rmse_mean`` / ``node_rmse_std``: mean and population std over nodes of each node's RMSE
      ``sqrt(mean((r_hat - r)^2))`` (stars);
    - ``node_mae_mean`` / ``node_mae_std``: same for the mean absolute error;
    - ``node_rating_acc_mean`` / ``node_rating_acc_std``: fraction of ratings whose prediction, rounded to the
      rating grid and clamped to ``[min, max]`` (:func:`round_to_grid`), equals the true rating (the "accuracy" of
      the EL reference code, decentralizepy);
    - ``avg_model_rmse``, ``avg_model_mae``, ``avg_model_rating_acc``: the averaged model's scores;
    - ``loss``: node-average MSE; and ``gossip/consensus_distance``.

    Args:
        model: Per-node model (callable or template), ``(B, 2)`` int64 -> ``(B,)``.
        num_nodes: ``n >= 2``.
        rating_grid: ``(min, max, step)`` of the ratings in stars; default: the datamodule's ``rating_grid``, read
            at ``setup``.
        **kwargs: The other arguments of :class:`~lightning_mosaic.MosaicModule` (``optimizer``, ``lr_scheduler``,
            ``init``, ``execution``, ``seed``, ...).

    Raises:
        ValueError: ``rating_grid`` not ``(min < max, step > 0)``; at ``setup``, no grid given and the datamodule
            has none, or the model's ``num_users`` / ``num_items`` differ from the datamodule's.
        RuntimeError: Evaluating before the rating grid is known (no ``rating_grid`` and no ``setup`` yet).
    """

    def __init__(
        self,
        model: Callable[[], nn.Module] | nn.Module,
        num_nodes: int,
        *,
        rating_grid: tuple[float, float, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, num_nodes, **kwargs)
        self.rating_grid = None if rating_grid is None else self._check_grid(rating_grid, "rating_grid")

    @staticmethod
    def _check_grid(grid: tuple[float, float, float], name: str) -> tuple[float, float, float]:
        try:
            low, high, step = (float(v) for v in grid)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be (min, max, step) in stars; got {grid!r}") from None
        if not (low < high and step > 0):
            raise ValueError(f"{name} must be (min, max, step) with min < max and step > 0; got {grid!r}")
        return low, high, step

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        data_grid = getattr(datamodule, "rating_grid", None)
        if self.rating_grid is None:
            if data_grid is None:
                raise ValueError(
                    "RatingModule needs the rating grid: pass rating_grid=(min, max, step) or use a datamodule with "
                    f"a rating_grid property (e.g. MovieLensDataModule); got {type(datamodule).__name__}"
                )
            self.rating_grid = self._check_grid(data_grid, f"{type(datamodule).__name__}.rating_grid")
        template = self.replicas.template
        for name in ("num_users", "num_items"):
            ours, theirs = getattr(template, name, None), getattr(datamodule, name, None)
            if ours is not None and theirs is not None and ours != theirs:
                raise ValueError(
                    f"the model has {name}={ours} but the datamodule {type(datamodule).__name__} has {theirs}; "
                    f"set model.init_args.model.init_args.{name}: {theirs}"
                )

    # -- losses ---------------------------------------------------------------------------------------------------

    def per_sample_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Squared error per node and rating: outputs ``(n, B)``, targets ``(n, B)`` -> ``(n, B)``."""
        return (outputs - targets.to(outputs.dtype)).square()

    def per_sample_correct(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """1.0 where the prediction rounded to the grid equals the rating: ``(n, B)``, ``(n, B)`` -> ``(n, B)``."""
        if self.rating_grid is None:
            raise RuntimeError("the rating grid is unknown: pass rating_grid=(min, max, step) or run setup() first")
        step = self.rating_grid[2]
        return ((round_to_grid(outputs, self.rating_grid) - targets).abs() < step / 4).to(torch.float32)

    # -- MosaicModule's public evaluation hooks ---------------------------------------------------------------

    def configure_eval_metrics(self) -> dict[str, Metric]:
        n = self.num_nodes
        return {
            "node_sq": NodeMean(n),
            "node_abs": NodeMean(n),
            "node_acc": NodeMean(n),
            "avg_sq": NodeMean(1),
            "avg_abs": NodeMean(1),
            "avg_acc": NodeMean(1),
        }

    def update_eval_metrics(
        self, metrics: nn.ModuleDict, outputs: Tensor, avg_outputs: Tensor | None, y: Tensor, first_node: int = 0
    ) -> None:
        for prefix, predicted, first in (("node", outputs, first_node), ("avg", avg_outputs, 0)):
            if predicted is None:  # the averaged model is evaluated by another process
                continue
            predicted = predicted if prefix == "node" else predicted.unsqueeze(0)
            targets = y.unsqueeze(0).expand(predicted.shape[0], -1).to(predicted.dtype)
            metrics[f"{prefix}_sq"].update(self.per_sample_loss(predicted, targets), first)
            metrics[f"{prefix}_abs"].update((predicted - targets).abs(), first)
            metrics[f"{prefix}_acc"].update(self.per_sample_correct(predicted, targets), first)

    def compute_eval_metrics(self, metrics: nn.ModuleDict, stage: str) -> dict[str, Tensor]:
        node_mse = metrics["node_sq"].compute()
        values = {f"{stage}/loss": node_mse.mean()}
        node = {
            "rmse": node_mse.sqrt(),
            "mae": metrics["node_abs"].compute(),
            "rating_acc": metrics["node_acc"].compute(),
        }
        for name, per_node in node.items():
            values[f"{stage}/node_{name}_mean"] = per_node.mean()
            values[f"{stage}/node_{name}_std"] = per_node.std(correction=0)
        values[f"{stage}/avg_model_rmse"] = metrics["avg_sq"].compute().sqrt().mean()
        values[f"{stage}/avg_model_mae"] = metrics["avg_abs"].compute().mean()
        values[f"{stage}/avg_model_rating_acc"] = metrics["avg_acc"].compute().mean()
        return values
