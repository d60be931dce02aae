"""GPU section: n GN-LeNet replicas (vmap vs per-node loop) against one model trained with batch n * B.

One training step = forward, backward and SGD step. For n in {64, 256} and B = 32: the ``(n, d)`` replica stack
(:class:`~lightning_mosaic.replicas.ReplicaStack`) run with ``execution="vmap"`` and ``"loop"``, and a single GN-LeNet
on one batch of n * B images (the same FLOPs: the lower bound for n replicas on one device). Reports milliseconds per
step and the ratios vmap / single and loop / single, plus peak device memory per path. Runs only when CUDA is present
(``--device cuda``, the default then); ``--device cpu --tiny`` runs a tiny size anywhere (the smoke test does).

Usage: ``python -m benchmarks.gpu [--device cuda] [--nodes 64 256] [--batch 32] [--repeats 10] [--out FILE]``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import interleaved_medians, machine, write_json_atomic
from lightning_mosaic.models import GNLeNet
from lightning_mosaic.replicas import ReplicaStack

LR = 0.05


def _peak_memory(fn, device: torch.device) -> float | None:
    """Peak device memory (MiB) allocated during one call of ``fn``; ``None`` off CUDA."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def bench(n: int, batch: int, repeats: int, device: torch.device) -> dict[str, Any]:
    """Milliseconds per training step of n replicas (vmap, loop) and of one model with batch n * B."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (n, batch), generator=gen).to(device)
    stack = ReplicaStack(GNLeNet, n).to(device)
    stack_opt = torch.optim.SGD(stack.parameters(), lr=LR)
    single = GNLeNet().to(device)
    single_opt = torch.optim.SGD(single.parameters(), lr=LR)
    xs, ys = x.flatten(0, 1), y.flatten()

    def replicas(execution: str):
        def step() -> None:
            stack_opt.zero_grad(set_to_none=True)
            out = stack(x, execution=execution)
            F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="sum").div(batch).backward()
            stack_opt.step()

        return step

    def one_model() -> None:
        single_opt.zero_grad(set_to_none=True)
        F.cross_entropy(single(xs), ys).backward()
        single_opt.step()

    fns = {"vmap": replicas("vmap"), "loop": replicas("loop"), "single": one_model}
    times = interleaved_medians(fns, repeats, warmup=2)
    memory = {f"{k}_peak_mib": _peak_memory(f, device) for k, f in fns.items()}
    row = {
        "n": n,
        "B": batch,
        "device": device.type,
        **{f"{k}_ms": 1e3 * v for k, v in times.items()},
        "vmap_over_single": times["vmap"] / times["single"],
        "loop_over_single": times["loop"] / times["single"],
        "loop_over_vmap": times["loop"] / times["vmap"],
        **memory,
    }
    print(
        f"  gpu n={n} B={batch} on {device.type}: vmap/single {row['vmap_over_single']:.2f}, "
        f"loop/single {row['loop_over_single']:.2f}, loop/vmap {row['loop_over_vmap']:.2f}",
        flush=True,
    )
    return row


def run(device: str | None = None, tiny: bool = False, nodes=(64, 256), batch: int = 32, repeats: int = 10):
    """All sizes; ``None`` when no device was given and CUDA is absent (the section is skipped)."""
    if device is None:
        if not torch.cuda.is_available():
            return None
        device = "cuda"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch.cuda.is_available() is False")
    if tiny:
        nodes, batch, repeats = (2, 4), 2, 1
    return [bench(n, batch, repeats, dev) for n in nodes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--tiny", action="store_true", help="n in {2, 4}, B = 2, one repeat (smoke test)")
    parser.add_argument("--nodes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=None, help="write the rows and the machine to this JSON file")
    args = parser.parse_args()
    rows = run(args.device, args.tiny, tuple(args.nodes), args.batch, args.repeats)
    if rows is None:
        print("no CUDA device: GPU section skipped (pass --device cpu --tiny to run it on the CPU)")
        return
    if args.out:
        write_json_atomic(args.out, {"machine": machine(), "gpu": rows})


if __name__ == "__main__":
    main()
