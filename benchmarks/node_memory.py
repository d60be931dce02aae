"""Memory audit of a node: every tensor a GN-LeNet node costs beyond the data shared by all nodes, by size formula
and measured bytes, after a real ``Trainer.fit`` of a few rounds (CPU, loop path, SGD, ``MosaicGossip`` K = 8,
s = 3, a CSV logger writing every step so that the consensus distance is computed every round).

The batches are synthetic tensors shaped like CIFAR-10's (float32 ``(n, B, 3, 32, 32)``, int64 labels): their size
is what matters here; ``benchmarks/scale.py`` measures the peak resident memory on the real data. Measured bytes are
read from the live objects after the fit (``nbytes`` of the tensors held), per node = total / n:

* ``parameters``, ``gradients``: ``replicas.flat`` and its ``.grad``, 4 d each;
* ``optimizer_state``: the optimizer's per-parameter tensors (plain SGD: none; ``--momentum``: 4 d);
* ``buffers``: the stacked per-node buffers (GN-LeNet has GroupNorm: none);
* ``batch``: one training batch (Lightning's loop fetches the next batch before the current step runs, so two are
  alive during a step);
* ``activations_one_node``: bytes autograd saves for one node's backward (``saved_tensors_hooks``); with the backward
  per node only one node's are alive at a time (before: all n until the single backward);
* ``consensus_workspace``: the float64 workspace of the consensus distance (``ConsensusDistance.workspace_nbytes``
  plus its ``(d,)`` column sums), O(chunk) now; before: ``8 n d``;
* ``gossip_workspace``: the index kernel's scratch (``mixing.workspace_size`` of the backend and layout that run:
  none for the fused "tiles" layout, ``n d`` values for "sorted", up to ``(2 n + 1) d`` for the torch backend, e.g.
  on GPUs); ``gossip_workspace_before``: what was allocated before, enough for either backend (the pages the
  "tiles" layout never wrote were never resident); ``gossip_receivers``: the ``(K, n, s)`` receiver lists.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.node_memory --nodes 16 128 --batch 32`` (prints one JSON row per n).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks.overhead import _Batches
from benchmarks.scale import _activation_bytes
from lightning_mosaic import MosaicGossip, MosaicModule
from lightning_mosaic.gossip import fused
from lightning_mosaic.gossip.metrics import ConsensusDistance
from lightning_mosaic.gossip.mixing import default_backend, workspace_size
from lightning_mosaic.models import GNLeNet


def audit(nodes: int, batch: int, rounds: int = 3, momentum: float = 0.0) -> dict[str, Any]:
    """Fit ``rounds`` rounds of ``nodes`` GN-LeNet nodes and return the per-node bytes of every allocation."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(nodes, batch, 3, 32, 32, generator=gen), torch.randint(0, 10, (nodes, batch), generator=gen))
        for _ in range(2)
    ]
    module = MosaicModule(GNLeNet, nodes, optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=momentum))
    gossip = MosaicGossip(fragments=8, peers=3, seed=0)
    with tempfile.TemporaryDirectory() as logs:
        trainer = Trainer(
            max_steps=rounds,
            accelerator="cpu",
            devices=1,
            callbacks=[gossip],
            logger=CSVLogger(logs),
            log_every_n_steps=1,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        trainer.fit(module, DataLoader(_Batches(batches, rounds), batch_size=None))
    flat = module.replicas.flat
    n, d = flat.shape
    state = trainer.optimizers[0].state.get(flat, {})
    protocol = gossip.protocol
    assert protocol is not None
    consensus = ConsensusDistance()
    consensus(flat.detach())
    k = protocol.fragmentation.num_fragments
    items = {
        "parameters": flat.nbytes,
        "gradients": 0 if flat.grad is None else flat.grad.nbytes,
        "optimizer_state": sum(t.nbytes for t in state.values() if torch.is_tensor(t)),
        "buffers": sum(t.nbytes for t in module.replicas.stacked_buffers().values()),
        "batch": sum(t.nbytes for t in batches[0]),
        "consensus_workspace": consensus.workspace_nbytes + 8 * d,
        "consensus_workspace_before": 8 * n * d,
        "gossip_workspace": workspace_size(n, protocol.fragmentation, default_backend(flat)) * flat.element_size(),
        "gossip_workspace_before": workspace_size(n, protocol.fragmentation) * flat.element_size(),
        "gossip_receivers": k * n * 3 * 8,
    }
    activations = _activation_bytes(GNLeNet(), (3, 32, 32), batch)
    return {
        "n": n,
        "B": batch,
        "d": d,
        "K": k,
        "execution": module.resolved_execution(),
        "backward_chunk": module.resolved_backward_chunk,
        "gossip_kernel": protocol.kernel,
        "fused_layout": fused.default_strategy(n, k) if fused.available() else None,
        "per_node_bytes": {name: value / n for name, value in items.items()},
        "activations_one_node_bytes": activations,
        "activations_alive_bytes": activations * (module.resolved_backward_chunk or n),
        "activations_alive_before_bytes": activations * n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--momentum", type=float, default=0.0)
    args = parser.parse_args()
    for n in args.nodes:
        print(json.dumps(audit(n, args.batch, args.rounds, args.momentum)), flush=True)


if __name__ == "__main__":
    main()
