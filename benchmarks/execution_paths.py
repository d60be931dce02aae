"""Benchmark: vmap vs per-node loop for one training step (forward + backward) of n replicas.

Prints, per model, the time per step of each path and the ratio loop / vmap measured in the same run, plus the
machine. Usage: ``python benchmarks/execution_paths.py [--nodes 16] [--batch 32] [--repeats 20]``; the suite
(``python -m benchmarks.run``) calls :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from lightning_mosaic.models import MLP, GNLeNet
from lightning_mosaic.replicas import ReplicaStack, default_execution

MODELS = {
    "gnlenet": (lambda: GNLeNet(), (3, 32, 32)),
    "mlp": (lambda: MLP(), (1, 8, 8)),
}


def time_paths(stack: ReplicaStack, x: torch.Tensor, y: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per training step (forward + backward) of each path, measured alternately so that drift in
    the machine's speed affects both paths alike."""

    def step(execution: str) -> float:
        start = time.perf_counter()
        stack.flat.grad = None
        out = stack(x, execution=execution)
        loss = torch.nn.functional.cross_entropy(out.flatten(0, 1), y.flatten())
        loss.backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for execution in ("vmap", "loop"):  # warm-up
        step(execution)
        step(execution)
    samples: dict[str, list[float]] = {"vmap": [], "loop": []}
    for _ in range(repeats):
        for execution in ("vmap", "loop"):
            samples[execution].append(step(execution))
    return {execution: statistics.median(times) for execution, times in samples.items()}


def run(nodes: int = 16, batch: int = 32, repeats: int = 5, device: str = "cpu", tiny: bool = False) -> list[dict]:
    """Rows ``{model, n, B, device, vmap_ms, loop_ms, loop_over_vmap, default}`` for every model of :data:`MODELS`;
    ``default`` is what ``execution="auto"`` picks (:func:`~lightning_mosaic.replicas.default_execution`)."""
    if tiny:
        nodes, batch, repeats = 4, 4, 1
    dev = torch.device(device)
    rows = []
    for name, (factory, shape) in MODELS.items():
        stack = ReplicaStack(factory, nodes).to(dev)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(nodes, batch, *shape, generator=gen).to(dev)
        y = torch.randint(0, 10, (nodes, batch), generator=gen).to(dev)
        times = time_paths(stack, x, y, repeats)
        rows.append(
            {
                "model": name,
                "n": nodes,
                "B": batch,
                "device": dev.type,
                "vmap_ms": 1e3 * times["vmap"],
                "loop_ms": 1e3 * times["loop"],
                "loop_over_vmap": times["loop"] / times["vmap"],
                "default": default_execution(dev, stack.template),
            }
        )
        r = rows[-1]
        print(f"  execution {name} n={nodes} B={batch}: loop/vmap {r['loop_over_vmap']:.2f}, default {r['default']}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the table to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name(device)}"
    print(f"machine: {machine}; threads: {torch.get_num_threads()}; n = {args.nodes}, B = {args.batch}")
    print(f"{'model':10s} {'vmap ms':>10s} {'loop ms':>10s} {'loop/vmap':>10s}")
    rows = []
    for name, (factory, shape) in MODELS.items():
        stack = ReplicaStack(factory, args.nodes).to(device)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.nodes, args.batch, *shape, generator=gen).to(device)
        y = torch.randint(0, 10, (args.nodes, args.batch), generator=gen).to(device)
        times = time_paths(stack, x, y, args.repeats)
        t_vmap, t_loop = times["vmap"], times["loop"]
        rows.append(
            {
                "model": name,
                "vmap_ms": 1e3 * t_vmap,
                "loop_ms": 1e3 * t_loop,
                "loop_over_vmap": t_loop / t_vmap,
            }
        )
        print(f"{name:10s} {1e3 * t_vmap:10.2f} {1e3 * t_loop:10.2f} {t_loop / t_vmap:10.2f}")
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"machine": machine, "nodes": args.nodes, "batch": args.batch, "rows": rows}, f, indent=2)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
