"""Scale: how many GN-LeNet nodes train on real CIFAR-10 in one process, at what speed and memory per node.

Every size runs in a fresh subprocess (``python -m benchmarks.scale --worker ...``), so that its peak resident set
size (``VmHWM``) belongs to that size alone. A worker loads CIFAR-10 (the 60,000 JPEGs of ``cifar10-jpg.tar.gz``,
decoded into one uint8 tensor shared by all nodes, read from the decoded-data cache; Dirichlet alpha 1), builds
``MosaicModule(GNLeNet, n)`` + ``MosaicGossip(K=8, s=3)`` and trains ``rounds`` rounds (one local SGD step each)
with a Lightning ``Trainer``. Reported:

* ``startup_s``: start of this module to the end of the first round (imports, data load, model build, first
  round), and its parts ``import_s``, ``data_s`` (load and partition), ``first_round_s`` (model build, Trainer
  set-up and the first round); finer: ``python_start_s`` (process start to this module, from ``/proc``, 10 ms
  resolution; ``startup_from_exec_s`` = that + ``startup_s``), ``import_torch_s`` / ``import_lightning_s`` /
  ``import_mosaic_s``, ``model_s`` (``MosaicModule``), ``trainer_setup_s`` (Trainer, ``fit`` set-up, loaders, first
  batch fetched) and ``first_round_only_s`` (its forward, backward, step and gossip). The data is read **warm**:
  ``run`` first loads CIFAR-10 once in a separate process (``--warm-cache``; its ``data_cold_s``, the JPEG decode
  and cache write, is reported per row) so that every worker reads the decoded-data cache
  (:mod:`lightning_mosaic.data.cache`; ``data_cache_hit`` says it did), as every start but the first does;
* ``rounds_per_s``: rounds after the first;
* ``peak_rss_mib`` (peak during the rounds: the high-water mark is reset after the data is loaded, Linux
  ``clear_refs``), ``peak_rss_during_data_load_mib`` and ``rss_after_data_mib``; ``per_node_mib`` = (peak - after
  data) / n, everything the nodes add beyond the data they share; and ``ideal_per_node_mib`` = parameters +
  gradients + optimizer state (plain SGD: none) = 2 * 4 d bytes. ``activation_mib_per_node_estimate``: bytes autograd
  saves for one node's backward at batch B (all n nodes' activations are alive until the one backward).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_PROCESS_START = time.perf_counter()


def _seconds_since_exec() -> float | None:
    """Seconds from this process's start (``/proc/self/stat`` field 22, clock ticks) to now; ``None`` off Linux."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


_PYTHON_START_S = _seconds_since_exec()
ARCHIVE_CANDIDATES = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpg.tar.gz",
    Path("/work/shared/data/cifar10-jpg.tar.gz"),
)


class cifar10_tree:
    """Context manager yielding a folder that holds ``cifar10/{train,test}``: ``$MOSAIC_CIFAR10_DIR`` as it is, or
    ``$MOSAIC_CIFAR10_ARCHIVE`` (else the first existing of :data:`ARCHIVE_CANDIDATES`) extracted into a temporary
    folder (in ``/dev/shm`` when possible) that is removed on exit. Same sources as the tests' ``cifar10_dir``.

    Raises:
        FileNotFoundError: Naming the paths looked at, when no tree and no archive exists.
    """

    def __enter__(self) -> Path:
        self._tmp: Path | None = None
        given = os.environ.get("MOSAIC_CIFAR10_DIR")
        if given:
            if not (Path(given) / "cifar10" / "train").is_dir():
                raise FileNotFoundError(f"MOSAIC_CIFAR10_DIR={given} holds no cifar10/train folder")
            return Path(given)
        env = os.environ.get("MOSAIC_CIFAR10_ARCHIVE")
        candidates = (Path(env),) if env else ARCHIVE_CANDIDATES
        archive = next((c for c in candidates if c.is_file()), None)
        if archive is None:
            raise FileNotFoundError(
                f"CIFAR-10 archive not found at {', '.join(map(str, candidates))}; set MOSAIC_CIFAR10_ARCHIVE to "
                "cifar10-jpg.tar.gz or MOSAIC_CIFAR10_DIR to an extracted copy"
            )
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        self._tmp = Path(tempfile.mkdtemp(prefix="mosaic-bench-cifar10-", dir=base))
        subprocess.run(["tar", "-xzf", str(archive), "-C", str(self._tmp)], check=True)
        return self._tmp

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def worker(data_dir: str | None, nodes: int, batch: int, rounds: int, fragments: int, peers: int) -> dict[str, Any]:
    """Train ``rounds`` rounds of ``nodes`` GN-LeNet nodes on CIFAR-10 (``data_dir``), or, with ``data_dir=None``
    (the smoke test), MLP nodes on the bundled digits; runs in its own process."""
    start_imports = time.perf_counter()
    import torch

    torch_imported = time.perf_counter()
    import lightning.pytorch  # noqa: F401  (timed on its own; everything below needs it)

    lightning_imported = time.perf_counter()
    from benchmarks.common import fit_rounds, peak_rss_bytes, reset_peak_rss, rss_bytes
    from lightning_mosaic import MosaicModule
    from lightning_mosaic.data import CIFAR10DataModule, DigitsDataModule
    from lightning_mosaic.models import MLP, GNLeNet

    imported = time.perf_counter()
    # Dirichlet alpha 1: with alpha 0.1, 50,000 CIFAR-10 samples cannot give each of 1,024 nodes a sample.
    common = {"num_nodes": nodes, "alpha": 1.0, "batch_size": batch, "seed": 0, "steps_per_epoch": rounds}
    if data_dir is None:
        data, model, shape = DigitsDataModule(**common), MLP, (1, 8, 8)
    else:
        data, model, shape = CIFAR10DataModule(data_dir, **common), GNLeNet, (3, 32, 32)
    data.setup("fit")
    loaded = time.perf_counter()
    load_peak = peak_rss_bytes()
    rss_data = rss_bytes()
    peak_was_reset = reset_peak_rss()  # the decode's temporaries must not count as the nodes' memory
    module = MosaicModule(model, nodes, optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
    built = time.perf_counter()
    starts: list[float] = []  # when each round's batch reaches the module (after the loader fetched it)
    on_batch_start = module.on_train_batch_start

    def timed_batch_start(*args: Any, **kwargs: Any) -> Any:
        starts.append(time.perf_counter())
        return on_batch_start(*args, **kwargs)

    module.on_train_batch_start = timed_batch_start  # type: ignore[method-assign]
    ends = fit_rounds(module, data, rounds, fragments, peers)
    d = module.replicas.num_coordinates
    peak = peak_rss_bytes()
    after_rounds = [b - a for a, b in zip(ends, ends[1:])]
    return {
        "model": type(module.replicas.template).__name__,
        "data": "cifar10" if data_dir is not None else "digits",
        "n": nodes,
        "B": batch,
        "K": fragments,
        "s": peers,
        "d": d,
        "rounds": len(ends),
        "execution": module.resolved_execution(),
        "import_s": imported - _PROCESS_START,
        "data_s": loaded - imported,
        "first_round_s": ends[0] - loaded,
        "startup_s": ends[0] - _PROCESS_START,
        "python_start_s": _PYTHON_START_S,
        "startup_from_exec_s": None if _PYTHON_START_S is None else _PYTHON_START_S + ends[0] - _PROCESS_START,
        "import_torch_s": torch_imported - start_imports,
        "import_lightning_s": lightning_imported - torch_imported,
        "import_mosaic_s": imported - lightning_imported,
        "model_s": built - loaded,
        "trainer_setup_s": starts[0] - built,
        "first_round_only_s": ends[0] - starts[0],
        "data_cache_hit": getattr(data, "cache_hit", None),
        "startup_without_data_s": ends[0] - _PROCESS_START - (loaded - imported),
        "rounds_per_s": len(after_rounds) / sum(after_rounds) if after_rounds else None,
        "seconds_per_round": sum(after_rounds) / len(after_rounds) if after_rounds else None,
        "rss_after_data_mib": rss_data / 2**20,
        "peak_rss_during_data_load_mib": load_peak / 2**20,
        "peak_reset_after_data": peak_was_reset,
        "peak_rss_mib": peak / 2**20,
        "per_node_mib": (peak - rss_data) / nodes / 2**20,
        "ideal_per_node_mib": 2 * 4 * d / 2**20,
        "activation_mib_per_node_estimate": _activation_bytes(model(), shape, batch) / 2**20,
    }


def _activation_bytes(model, shape: tuple[int, ...], batch: int) -> int:
    """Bytes of the tensors autograd saves for one node's backward at batch ``batch`` (measured with
    ``torch.autograd.graph.saved_tensors_hooks`` on one forward pass)."""
    import torch

    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(batch, *shape)).sum()
    return total


def run(
    sizes: list[int], batch: int, rounds: int, fragments: int = 8, peers: int = 3, tiny: bool = False
) -> list[dict[str, Any]]:
    """One subprocess per n in ``sizes``; a size that fails (e.g. out of memory) is reported with its error.
    ``tiny``: the bundled digits instead of CIFAR-10, in this process (the smoke test: checks the machinery; its
    memory numbers include the calling process)."""
    if tiny:
        return [worker(None, n, batch, rounds, fragments, peers) for n in sizes]
    rows = []
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    with cifar10_tree() as data_dir:
        warm = _warm_cache(data_dir, repo, env)
        for n in sizes:
            cmd = [sys.executable, "-m", "benchmarks.scale", "--worker", "--nodes", str(n), "--data", str(data_dir)]
            cmd += ["--batch", str(batch), "--rounds", str(rounds), "--fragments", str(fragments)]
            cmd += ["--peers", str(peers)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or not lines:
                rows.append({"n": n, "B": batch, "error": (proc.stderr or proc.stdout)[-2000:]})
                print(f"  scale n={n}: FAILED (exit {proc.returncode})", flush=True)
                continue
            rows.append({**json.loads(lines[-1]), **warm})
            r = rows[-1]
            print(
                f"  scale n={n} B={batch}: {r['rounds_per_s']:.3f} rounds/s, start-up {r['startup_s']:.1f} s "
                f"(import {r['import_s']:.1f} s, data {r['data_s']:.1f} s from the cache: {r['data_cache_hit']}, "
                f"model + Trainer + first round {r['first_round_s']:.1f} s), {r['per_node_mib']:.2f} MiB/node "
                f"(ideal {r['ideal_per_node_mib']:.2f})",
                flush=True,
            )
    return rows


def warm_cache(data_dir: str) -> dict[str, Any]:
    """Load CIFAR-10 from ``data_dir`` once so that its decoded-data cache exists (the ``--warm-cache`` process)."""
    from lightning_mosaic.data import CIFAR10DataModule

    start = time.perf_counter()
    data = CIFAR10DataModule(data_dir, num_nodes=2, alpha="iid")
    data.setup("fit")
    return {
        "data_cold_s": time.perf_counter() - start,
        "data_cold_was_cache_hit": data.cache_hit,
        "data_cache_file": None if data.cache_file is None else str(data.cache_file),
    }


def _warm_cache(data_dir: Path, repo: Path, env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.scale", "--warm-cache", "--data", str(data_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"loading CIFAR-10 to warm its cache failed:\n{(proc.stderr or proc.stdout)[-2000:]}")
    warm = json.loads(lines[-1])
    if warm["data_cache_file"] is None:
        print("  scale: WARNING: the decoded-data cache could not be written; workers decode the JPEGs", flush=True)
    print(f"  scale: CIFAR-10 loaded once to warm the cache in {warm['data_cold_s']:.1f} s", flush=True)
    return warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", action="store_true", help="internal: run one size and print its JSON row")
    parser.add_argument("--warm-cache", action="store_true", help="internal: load --data once, print the JSON")
    parser.add_argument("--data", default=None)
    parser.add_argument("--nodes", type=int, nargs="+", default=[16, 256, 1024])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fragments", type=int, default=8)
    parser.add_argument("--peers", type=int, default=3)
    args = parser.parse_args()
    if args.warm_cache:
        print(json.dumps(warm_cache(args.data)))
        return
    if args.worker:
        print(json.dumps(worker(args.data, args.nodes[0], args.batch, args.rounds, args.fragments, args.peers)))
        return
    print(json.dumps(run(args.nodes, args.batch, args.rounds, args.fragments, args.peers), indent=2))


if __name__ == "__main__":
    main()
