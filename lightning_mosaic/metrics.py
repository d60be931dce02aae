"""Node-level evaluation metrics (torchmetrics), as defined by Mosaic Learning (arXiv 2602.04352, Section 5).

``ConsensusDistance`` here is :class:`~lightning_mosaic.distributed.sharding.ShardedConsensusDistance`: the one
consensus-distance computation (:class:`~lightning_mosaic.gossip.metrics.ConsensusDistance`) over rows that may be
spread over processes.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from lightning_mosaic._validation import check_int
from lightning_mosaic.distributed.sharding import ShardedConsensusDistance as ConsensusDistance
from lightning_mosaic.distributed.sharding import all_reduce_sum
from lightning_mosaic.replicas import node_batch_size, select_node

__all__ = ["ConsensusDistance", "NodeMean", "PerNodeMetric", "metric_scalar", "own_copy"]


class NodeMean(Metric):
    """Per-node running mean of a per-sample quantity (correctness for accuracy, loss for mean loss).

    The paper's node-level metrics evaluate every node's own model on the shared test set; this metric keeps one
    sum per node, so the node-average and the spread over nodes come from the same pass.

    Args:
        num_nodes: n >= 1 (1 for a single model such as the averaged model).

    States (summed across processes, ``dist_reduce_fx="sum"``):
        total: ``(n,)`` sum of the values per node.
        count: ``(n,)`` number of samples each node was evaluated on.

    When the nodes are spread over processes, each process updates the rows of its own nodes (``first_node``) and
    the sums across processes assemble all n nodes.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_nodes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        check_int("num_nodes", num_nodes, 1)
        self.num_nodes = num_nodes
        self.add_state("total", default=torch.zeros(num_nodes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_nodes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Tensor, first_node: int = 0, mask: Tensor | None = None) -> None:
        """Add a batch for nodes ``first_node, ..., first_node + m - 1``.

        Args:
            values: ``(m, B)`` per-node, per-sample values (e.g. 1.0 where node i classified sample b correctly).
            first_node: Index of the node of row 0 (default 0, with m = n: all nodes).
            mask: Optional ``(m, B)`` bool: only the values where it is True count (e.g. no padding tokens).

        Raises:
            ValueError: If ``values`` is not shaped ``(m, B)`` with ``first_node + m <= n``.
        """
        if values.dim() != 2 or not 0 <= first_node <= first_node + values.shape[0] <= self.num_nodes:
            raise ValueError(
                f"values must be shaped (m, B) for nodes [first_node, first_node + m) within n = {self.num_nodes}, "
                f"got {tuple(values.shape)} with first_node={first_node}"
            )
        rows = slice(first_node, first_node + values.shape[0])
        if mask is None:
            self.total[rows] += values.detach().to(torch.float64).sum(dim=1)
            self.count[rows] += values.shape[1]
            return
        self.total[rows] += (values.detach().to(torch.float64) * mask).sum(dim=1)
        self.count[rows] += mask.sum(dim=1).to(torch.float64)

    def compute(self) -> Tensor:
        """``(n,)`` float64 mean per node."""
        return self.total / self.count.clamp_min(1)


def metric_scalar(value: Any, what: str) -> float:
    """A metric's computed value as a float: nodes are compared and averaged on one number each.

    Args:
        value: What ``Metric.compute()`` returned: a one-element tensor or a number.
        what: How the error names the metric (e.g. ``"metrics['f1']"``).

    Raises:
        ValueError: If ``value`` is a tensor of more than one element (e.g. a per-class metric).
    """
    if isinstance(value, Tensor) and value.numel() != 1:
        raise ValueError(
            f"{what} computed a tensor of shape {tuple(value.shape)}; MosaicModule reports scalar metrics per node "
            "(e.g. average='micro' or 'macro', not None)"
        )
    return float(value)


def own_copy(metric: Metric | MetricCollection) -> Metric | MetricCollection:
    """A fresh copy of a user's metric for one node that never synchronizes across processes by itself (each
    process holds other nodes; the caller assembles all n)."""
    clone = copy.deepcopy(metric)
    clone.reset()
    for sub in clone.modules():
        if isinstance(sub, Metric):
            sub.sync_on_compute = False
            sub.dist_sync_on_step = False
            # torchmetrics reads this at every sync (sync_on_compute is only read at construction): never sync
            sub.distributed_available_fn = _never
    return clone


def _never() -> bool:
    return False


class PerNodeMetric(nn.Module):
    """A torchmetrics ``Metric`` kept once per node and once for the averaged model.

    Args:
        metric: Any scalar-valued torchmetrics metric (e.g. ``MulticlassAccuracy(10)``, ``MeanSquaredError()``);
            it is copied, never updated itself.
        num_nodes: n >= 1; one copy per node (a process updates the rows of its own nodes).

    Example:
        >>> from torchmetrics.regression import MeanAbsoluteError
        >>> metric = PerNodeMetric(MeanAbsoluteError(), 2)
        >>> metric.update(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([1.0, 1.0]), torch.tensor([1.0, 2.0]))
        >>> per_node, average = metric.compute_nodes(0, 2)
        >>> per_node.tolist(), float(average)
        ([0.0, 1.5], 0.5)
    """

    def __init__(self, metric: Metric, num_nodes: int, name: str = "metric") -> None:
        super().__init__()
        check_int("num_nodes", num_nodes, 1)
        self.name = name
        self.copies = nn.ModuleList([own_copy(metric) for _ in range(num_nodes)])
        self.average = own_copy(metric)

    def update(self, outputs: Any, avg_outputs: Any | None, target: Any) -> None:
        """Add one batch: ``outputs`` ``(m, B, ...)`` of this process's m nodes (row i updates copy i),
        ``avg_outputs`` ``(B, ...)`` of the averaged model or ``None``, ``target`` ``(B, ...)``."""
        for i in range(node_batch_size(outputs)):
            self.copies[i].update(select_node(outputs, i), target)
        if avg_outputs is not None:
            self.average.update(avg_outputs, target)

    def compute_nodes(self, first_node: int, num_local: int) -> tuple[Tensor, Tensor]:
        """``(per_node (n,), averaged_model ())`` float64 values over all n nodes: rows ``[0, num_local)`` are nodes
        ``first_node, ...``; summed over processes (a collective) when ``num_local`` < n. The averaged model's value
        comes from the process that updated it."""
        n = len(self.copies)
        device = self.average.device
        per_node = torch.zeros(n, dtype=torch.float64, device=device)
        average = torch.zeros(2, dtype=torch.float64, device=device)
        for i in range(num_local):
            per_node[first_node + i] = metric_scalar(self.copies[i].compute(), f"metrics[{self.name!r}]")
        if self.average.update_count:
            average[0], average[1] = metric_scalar(self.average.compute(), f"metrics[{self.name!r}]"), 1.0
        if num_local < n:
            per_node, average = all_reduce_sum(per_node), all_reduce_sum(average)
        return per_node, average[0] / average[1].clamp_min(1)

    def reset(self) -> None:
        """Reset every copy."""
        for metric in [*self.copies, self.average]:
            metric.reset()
