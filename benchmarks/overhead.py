"""Round overhead: Lightning ``Trainer`` + ``MosaicModule`` + ``MosaicGossip`` vs a bare PyTorch loop.

Per model, three ways to run the same rounds (n nodes, batch B, one local step then one gossip round of K fragments
to s peers, EL-Local, SGD):

* ``lightning``: ``Trainer.fit`` of ``MosaicModule`` with the ``MosaicGossip`` callback (the library as users run
  it; ``execution="auto"``), and ``lightning_loop`` with ``execution="loop"`` where auto picks vmap;
* ``bare``: n ordinary ``nn.Module`` copies, each with its own ``torch.optim.SGD``; per node forward, loss, backward
  and step; then the same gossip round on the stacked ``(n, d)`` parameters (``FragmentGossip``, pure tensor code),
  written back with ``vector_to_parameters``: what one writes without any framework;
* ``bare_nomix``: the same loop without gossip (the local-compute floor).

Batches are the same pre-made in-memory tensors for all three (random normal inputs shaped like the real data; data
loading is not part of the comparison). Per-round time = time between the ends of consecutive rounds (Lightning:
between ``on_train_batch_end`` calls after the gossip, so the loop, data fetch and logging are included); the first
round of every chunk is dropped. The three runs alternate in chunks, and the table reports ratios of medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import fit_rounds
from lightning_mosaic import MosaicModule
from lightning_mosaic.gossip import FragmentGossip
from lightning_mosaic.models import MLP, GNLeNet, MatrixFactorization
from lightning_mosaic.tasks.rating import RatingModule

LR = 0.05


class _Batches(Dataset):
    """``length`` items cycling through pre-made ``(x, y)`` batches (no per-item work)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batches[i % len(self.batches)]


def _lightning_rounds(module: MosaicModule, batches, rounds: int, fragments: int, peers: int) -> list[float]:
    ends = fit_rounds(module, DataLoader(_Batches(batches, rounds), batch_size=None), rounds, fragments, peers)
    return [b - a for a, b in zip(ends, ends[1:])]


class _BareLoop:
    """n plain ``nn.Module`` replicas, one SGD optimizer each, optional gossip on the stacked parameters."""

    def __init__(
        self, factory: Callable[[], nn.Module], n: int, fragments: int, peers: int, mix: bool, loss: nn.Module
    ) -> None:
        torch.manual_seed(0)
        first = factory()
        self.models = [first] + [factory() for _ in range(n - 1)]
        for m in self.models[1:]:
            m.load_state_dict(first.state_dict())
        self.optimizers = [torch.optim.SGD(m.parameters(), lr=LR) for m in self.models]
        d = sum(p.numel() for p in first.parameters())
        self.gossip = FragmentGossip([d], n, fragments=fragments, peers=peers, seed=0) if mix else None
        self.loss = loss

    def round(self, x: torch.Tensor, y: torch.Tensor) -> None:
        for i, (model, opt) in enumerate(zip(self.models, self.optimizers)):
            opt.zero_grad(set_to_none=True)
            self.loss(model(x[i]), y[i]).backward()
            opt.step()
        if self.gossip is not None:
            with torch.no_grad():
                flat = torch.stack([parameters_to_vector(m.parameters()) for m in self.models])
                self.gossip.round_(flat)
                for row, model in zip(flat, self.models):
                    vector_to_parameters(row, model.parameters())

    def rounds(self, batches, rounds: int) -> list[float]:
        ends = []
        for r in range(rounds):
            x, y = batches[r % len(batches)]
            self.round(x, y)
            ends.append(time.perf_counter())
        return [b - a for a, b in zip(ends, ends[1:])]


def bench_model(
    name: str,
    factory: Callable[[], nn.Module],
    shape: tuple[int, ...],
    n: int,
    batch: int,
    fragments: int,
    peers: int,
    rounds: int,
    chunks: int,
    task: str = "classification",
) -> dict[str, Any]:
    """Median seconds per round of each way to run, and their ratios.

    ``task="classification"``: inputs ``(n, B, *shape)``, 10 classes, cross-entropy, ``MosaicModule``.
    ``task="rating"``: ``shape = (users, items)``, inputs ``(n, B, 2)`` ids, ratings 1-5, MSE, ``RatingModule``.
    """
    gen = torch.Generator().manual_seed(0)
    if task == "rating":
        users, items = shape
        batches = [
            (
                torch.stack(
                    [
                        torch.randint(0, users, (n, batch), generator=gen),
                        torch.randint(0, items, (n, batch), generator=gen),
                    ],
                    dim=-1,
                ),
                torch.randint(1, 6, (n, batch), generator=gen).float(),
            )
            for _ in range(4)
        ]
        loss: nn.Module = nn.MSELoss()

        def make(**kwargs: Any) -> MosaicModule:
            sgd = lambda p: torch.optim.SGD(p, lr=LR)  # noqa: E731
            return RatingModule(factory, n, optimizer=sgd, rating_grid=(1, 5, 1), **kwargs)
    else:
        batches = [
            (torch.randn(n, batch, *shape, generator=gen), torch.randint(0, 10, (n, batch), generator=gen))
            for _ in range(4)
        ]
        loss = nn.CrossEntropyLoss()

        def make(**kwargs: Any) -> MosaicModule:
            return MosaicModule(factory, n, optimizer=lambda p: torch.optim.SGD(p, lr=LR), **kwargs)

    module = make()
    runs: dict[str, Callable[[], list[float]]] = {
        "lightning": lambda: _lightning_rounds(module, batches, rounds, fragments, peers),
    }
    if module.resolved_execution() != "loop":
        looped = make(execution="loop")
        runs["lightning_loop"] = lambda: _lightning_rounds(looped, batches, rounds, fragments, peers)
    bare = _BareLoop(factory, n, fragments, peers, mix=True, loss=loss)
    floor = _BareLoop(factory, n, fragments, peers, mix=False, loss=loss)
    runs["bare"] = lambda: bare.rounds(batches, rounds)
    runs["bare_nomix"] = lambda: floor.rounds(batches, rounds)
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(chunks):
        for key, fn in runs.items():
            samples[key] += fn()[1:]  # drop the first measured round of every chunk
    med = {k: statistics.median(v) for k, v in samples.items()}
    row: dict[str, Any] = {
        "model": name,
        "n": n,
        "B": batch,
        "K": fragments,
        "s": peers,
        "execution": module.resolved_execution(),
        "rounds_measured": len(samples["bare"]),
        **{f"{k}_ms": 1e3 * v for k, v in med.items()},
        "lightning_over_bare": med["lightning"] / med["bare"],
        "lightning_over_bare_nomix": med["lightning"] / med["bare_nomix"],
        "bare_over_bare_nomix": med["bare"] / med["bare_nomix"],
    }
    if "lightning_loop" in med:
        row["lightning_loop_over_bare"] = med["lightning_loop"] / med["bare"]
    return row


def run(tiny: bool = False) -> list[dict[str, Any]]:
    """GN-LeNet (CIFAR-10 sized), the MLP (digits sized) and matrix factorization (MovieLens 100K sized: 943 users,
    1,682 movies, 20 factors, d = 55,125; B = 256 as in the recipe)."""
    n, k, s = (4, 2, 1) if tiny else (16, 8, 3)
    rounds, chunks = (4, 1) if tiny else (8, 3)
    users, items = (20, 30) if tiny else (943, 1682)
    rows = [
        bench_model("gnlenet", GNLeNet, (3, 32, 32), n, 4 if tiny else 32, k, s, rounds, chunks),
        bench_model("mlp", MLP, (1, 8, 8), n, 32, k, s, 10 if tiny else 60, chunks),
        bench_model(
            "mf",
            lambda: MatrixFactorization(users, items),
            (users, items),
            n,
            8 if tiny else 256,
            k,
            s,
            10 if tiny else 60,
            chunks,
            task="rating",
        ),
    ]
    for r in rows:
        print(
            f"  overhead {r['model']}: lightning/bare {r['lightning_over_bare']:.3f}, lightning/bare_nomix "
            f"{r['lightning_over_bare_nomix']:.3f} ({r['lightning_ms']:.2f} ms/round)",
            flush=True,
        )
    return rows
