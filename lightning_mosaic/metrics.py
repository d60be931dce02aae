"""Node-level evaluation metrics (torchmetrics), as defined by Mosaic Learning (arXiv 2602.04352, Section 5).

``ConsensusDistance`` here is :class:`~lightning_mosaic.distributed.sharding.ShardedConsensusDistance`: the one
consensus-distance computation (:class:`~lightning_mosaic.gossip.metrics.ConsensusDistance`) over rows that may be
spread over processes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_mosaic._validation import check_int
from lightning_mosaic.distributed.sharding import ShardedConsensusDistance as ConsensusDistance

__all__ = ["ConsensusDistance", "NodeMean"]


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

    def update(self, values: Tensor, first_node: int = 0) -> None:
        """Add a batch for nodes ``first_node, ..., first_node + m - 1``.

        Args:
            values: ``(m, B)`` per-node, per-sample values (e.g. 1.0 where node i classified sample b correctly).
            first_node: Index of the node of row 0 (default 0, with m = n: all nodes).

        Raises:
            ValueError: If ``values`` is not shaped ``(m, B)`` with ``first_node + m <= n``.
        """
        if values.dim() != 2 or not 0 <= first_node <= first_node + values.shape[0] <= self.num_nodes:
            raise ValueError(
                f"values must be shaped (m, B) for nodes [first_node, first_node + m) within n = {self.num_nodes}, "
                f"got {tuple(values.shape)} with first_node={first_node}"
            )
        rows = slice(first_node, first_node + values.shape[0])
        self.total[rows] += values.detach().to(torch.float64).sum(dim=1)
        self.count[rows] += values.shape[1]

    def compute(self) -> Tensor:
        """``(n,)`` float64 mean per node."""
        return self.total / self.count.clamp_min(1)
