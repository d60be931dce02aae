"""Scale: how many GN-LeNet nodes train on real CIFAR-10 in one process, at what speed and memory per node.

Every size runs in a fresh subprocess (``python -m benchmarks.scale --worker ...``), so that its peak resident set
size (``VmHWM``) belongs to that size alone. A worker loads CIFAR-10 (the 60,000 JPEGs of ``cifar10-jpg.tar.gz``,
decoded into one uint8 tensor shared by all nodes, read from the decoded-data cache; Dirichlet alpha 1), builds
``MosaicModule(GNLeNet, n)`` + ``MosaicGossip(K=8, s=3)`` and trains ``rounds`` rounds (one local SGD step each,
plain SGD at :data:`GNLENET_LR` = 0.01, recorded as ``lr`` in the row) with a Lightning ``Trainer``. Reported:

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
  saves for one node's backward at batch B (alive for one node at a time: the backward runs per node);
* ``node_losses``: every round's training loss, the mean over nodes of each node's cross-entropy on its batch
  (``loss_first``, ``loss_last``: the first and last), to show that the rows train.

Matrix factorization (:func:`run_mf`, ``--model mf``): the same measurements for ``RatingModule`` +
``MatrixFactorization`` (943 users x 1,682 movies, 20 factors, d = 55,125, as in the ``movielens_mosaic`` recipe
but with SGD lr 0.5: the recipe's lr 8 diverges when a node holds a single user, whose bias then gets the whole
batch's gradient) on the real MovieLens 100K (``MovieLensDataModule``, users spread evenly over
the nodes: with n = 943 every node holds exactly one user's ratings), at n = 16, 256 and 943. The data is the 100,000
ratings (a few MB), so ``rss_after_data_mib`` is mostly the libraries. ``consensus_workspace_per_node_mib``: the
float64 workspace the per-round consensus distance is computed in, per node (one chunk of rows,
``gossip.metrics.DEFAULT_WORKSPACE_BYTES``, plus the ``(d,)`` column sums, divided by n; it was 8 d bytes per
node). ``batch_fetch_s``: median time to fetch one training batch (n B ratings) from the data module's loader,
measured after the rounds; part of every round's time. ``node_losses``: every round's training loss, the mean over
nodes of each node's MSE on its batch (``loss_first``, ``loss_last``: the first and last), to show that the rows train.
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
MF_SIZES = (16, 256, 943)
"""Matrix-factorization sizes of the suite: 943 = one node per MovieLens 100K user."""
MF_MIN_ROUNDS = 10
"""Rounds per matrix-factorization size in the suite (its rounds are short; the first is start-up)."""
GNLENET_LR = 0.01
"""SGD learning rate of the GN-LeNet rows (no momentum). The ``cifar10_mosaic`` recipe's 0.05 (EL's) is above the
first steps' stability limit of plain SGD: at initialization the classifier's 1,024 inputs have a squared norm of about
930 per image (GroupNorm, ReLU and max-pooling make them positive and alike), so the cross-entropy's curvature along
the classifier is roughly 930 x 0.1 = 93 and steps above about 2 / 93 = 0.02 overshoot. At 0.05 the node loss of a
row rises for its first rounds (n = 16, B = 8: 2.50, 3.92, 4.04, 4.40, 2.98) and stays above ln 10 until round 8; at
0.02 it rises once (2.50, 2.88, 2.46, 2.48, 2.24); at 0.01 it falls from the first step on (2.50, 2.43, 2.15, 2.20,
2.11), so a few rounds show training at every n.
Memory and round time do not depend on it (plain SGD keeps no state)."""
MF_LR = 0.5
"""SGD learning rate of the matrix-factorization rows (stable with one user per node; the recipe's 8 is not)."""
MOVIELENS_CANDIDATES = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k",
    Path("/work/shared/data/ml-100k"),
)
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
    # Dirichlet alpha 1: with alpha 0.1, 50,000 CIFAR-10 samples cannot give each of 1,024 nodes a sample; above
    # 1,024 nodes (5 samples or fewer per node) not even alpha 1 can, so those rows split IID (the partition changes
    # what a node learns, not its memory or its round time).
    alpha: float | str = 1.0 if nodes <= 1024 else "iid"
    common = {"num_nodes": nodes, "alpha": alpha, "batch_size": batch, "seed": 0, "steps_per_epoch": rounds}
    if data_dir is None:
        data, model, shape = DigitsDataModule(**common), MLP, (1, 8, 8)
    else:
        data, model, shape = CIFAR10DataModule(data_dir, **common), GNLeNet, (3, 32, 32)
    data.setup("fit")
    loaded = time.perf_counter()
    load_peak = peak_rss_bytes()
    rss_data = rss_bytes()
    peak_was_reset = reset_peak_rss()  # the decode's temporaries must not count as the nodes' memory
    module = MosaicModule(model, nodes, optimizer=lambda p: torch.optim.SGD(p, lr=GNLENET_LR))
    built = time.perf_counter()
    starts: list[float] = []  # when each round's batch reaches the module (after the loader fetched it)
    on_batch_start = module.on_train_batch_start

    def timed_batch_start(*args: Any, **kwargs: Any) -> Any:
        starts.append(time.perf_counter())
        return on_batch_start(*args, **kwargs)

    module.on_train_batch_start = timed_batch_start  # type: ignore[method-assign]
    losses: list[float] = []
    ends = fit_rounds(module, data, rounds, fragments, peers, losses=losses)
    d = module.replicas.num_coordinates
    peak = peak_rss_bytes()
    after_rounds = [b - a for a, b in zip(ends, ends[1:])]
    return {
        "model": type(module.replicas.template).__name__,
        "data": "cifar10" if data_dir is not None else "digits",
        "n": nodes,
        "B": batch,
        "alpha": alpha,
        "lr": GNLENET_LR,
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
        "node_losses": [loss / nodes for loss in losses],
        "loss_first": losses[0] / nodes,
        "loss_last": losses[-1] / nodes,
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


def movielens100k_dir() -> Path:
    """The folder holding MovieLens 100K's ``u.data``: ``$MOSAIC_MOVIELENS100K_DIR``, else the first of
    :data:`MOVIELENS_CANDIDATES` that has it (the tests' sources, read in place).

    Raises:
        FileNotFoundError: Naming the paths looked at.
    """
    env = os.environ.get("MOSAIC_MOVIELENS100K_DIR")
    candidates = (Path(env),) if env else MOVIELENS_CANDIDATES
    found = next((c for c in candidates if (c / "u.data").is_file()), None)
    if found is None:
        raise FileNotFoundError(
            f"MovieLens 100K (u.data) not found in {', '.join(map(str, candidates))}; set MOSAIC_MOVIELENS100K_DIR to "
            "the extracted ml-100k folder"
        )
    return found


def _write_tiny_movielens(folder: Path, users: int = 40, items: int = 60, per_user: int = 15) -> Path:
    """A small synthetic ``u.data`` in the 100K format (tab-separated user, item, stars, timestamp), for ``--tiny``."""
    import numpy as np

    rng = np.random.default_rng(0)
    lines = []
    for user in range(1, users + 1):
        for item in rng.choice(items, size=per_user, replace=False) + 1:
            lines.append(f"{user}\t{item}\t{rng.integers(1, 6)}\t{880000000 + len(lines)}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    return folder


def mf_worker(data_dir: str, nodes: int, batch: int, rounds: int, fragments: int, peers: int) -> dict[str, Any]:
    """Train ``rounds`` rounds of ``nodes`` matrix-factorization nodes on MovieLens 100K (``data_dir`` holding
    ``u.data``); runs in its own process (the same phases and memory accounting as :func:`worker`)."""
    import torch

    from benchmarks.common import fit_rounds, peak_rss_bytes, reset_peak_rss, rss_bytes
    from lightning_mosaic.data import MovieLensDataModule
    from lightning_mosaic.models import MatrixFactorization
    from lightning_mosaic.tasks import RatingModule

    imported = time.perf_counter()
    data = MovieLensDataModule(data_dir, nodes, "iid", batch, variant="100k", seed=0, steps_per_epoch=rounds)
    data.setup("fit")
    loaded = time.perf_counter()
    load_peak = peak_rss_bytes()
    rss_data = rss_bytes()
    peak_was_reset = reset_peak_rss()
    users, items = data.num_users, data.num_items

    def model() -> MatrixFactorization:
        return MatrixFactorization(users, items, factors=20, bias=True, global_mean=3.5)

    module = RatingModule(model, nodes, optimizer=lambda p: torch.optim.SGD(p, lr=MF_LR))
    losses: list[float] = []
    ends = fit_rounds(module, data, rounds, fragments, peers, losses=losses)
    d = module.replicas.num_coordinates
    peak = peak_rss_bytes()
    after_rounds = [b - a for a, b in zip(ends, ends[1:])]
    users_per_node = [int((data.node_of_user == i).sum()) for i in range(nodes)]
    batches = iter(data.train_dataloader())  # after the peak was read: how much of a round is the batch fetch
    next(batches)
    fetches = []
    for _ in range(min(3, max(rounds - 1, 1))):
        start = time.perf_counter()
        next(batches)
        fetches.append(time.perf_counter() - start)
    return {
        "model": "MatrixFactorization",
        "data": "movielens-100k",
        "n": nodes,
        "B": batch,
        "lr": MF_LR,
        "K": fragments,
        "s": peers,
        "d": d,
        "users": users,
        "items": items,
        "users_per_node_min": min(users_per_node),
        "users_per_node_max": max(users_per_node),
        "rounds": len(ends),
        "execution": module.resolved_execution(),
        "import_s": imported - _PROCESS_START,
        "data_s": loaded - imported,
        "first_round_s": ends[0] - loaded,
        "startup_s": ends[0] - _PROCESS_START,
        "rounds_per_s": len(after_rounds) / sum(after_rounds) if after_rounds else None,
        "seconds_per_round": sum(after_rounds) / len(after_rounds) if after_rounds else None,
        "node_losses": [loss / nodes for loss in losses],
        "loss_first": losses[0] / nodes,
        "loss_last": losses[-1] / nodes,
        "batch_fetch_s": sorted(fetches)[len(fetches) // 2],
        "rss_after_data_mib": rss_data / 2**20,
        "peak_rss_during_data_load_mib": load_peak / 2**20,
        "peak_reset_after_data": peak_was_reset,
        "peak_rss_mib": peak / 2**20,
        "per_node_mib": (peak - rss_data) / nodes / 2**20,
        "ideal_per_node_mib": 2 * 4 * d / 2**20,
        "consensus_workspace_per_node_mib": _consensus_workspace_bytes(nodes, d) / nodes / 2**20,
        "activation_mib_per_node_estimate": _mf_activation_bytes(model(), users, items, batch) / 2**20,
    }


def _consensus_workspace_bytes(nodes: int, d: int) -> int:
    """Bytes of :class:`~lightning_mosaic.gossip.metrics.ConsensusDistance`'s workspace for n rows of d values."""
    from lightning_mosaic.gossip.metrics import DEFAULT_WORKSPACE_BYTES

    return (max(1, min(nodes, DEFAULT_WORKSPACE_BYTES // (8 * d))) + 1) * 8 * d


def _mf_activation_bytes(model, users: int, items: int, batch: int) -> int:
    """Bytes autograd saves for one matrix-factorization node's backward at batch ``batch``."""
    import torch

    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    x = torch.stack([torch.randint(0, users, (batch,)), torch.randint(0, items, (batch,))], dim=-1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return total


def run_mf(
    sizes: list[int], batch: int, rounds: int, fragments: int = 8, peers: int = 3, tiny: bool = False
) -> list[dict[str, Any]]:
    """Matrix factorization on MovieLens 100K: one subprocess per n in ``sizes`` (a size that fails is reported with
    its error). ``tiny``: a small synthetic ``u.data`` in a temporary folder, in this process (the smoke test)."""
    if tiny:
        with tempfile.TemporaryDirectory(prefix="mosaic-bench-movielens-") as folder:
            data_dir = _write_tiny_movielens(Path(folder))
            rows = [mf_worker(str(data_dir), n, batch, rounds, fragments, peers) for n in sizes]
        return [{**r, "data": "synthetic ratings in the 100K format (tiny)"} for r in rows]
    data_dir = movielens100k_dir()
    rows = []
    for n in sizes:
        rows.append(_subprocess_row("mf", str(data_dir), n, batch, rounds, fragments, peers))
        r = rows[-1]
        if "error" not in r:
            print(
                f"  scale mf n={n} B={batch}: {r['rounds_per_s']:.3f} rounds/s (fetch {r['batch_fetch_s']:.3f} s), "
                f"node loss {r['loss_first']:.3f} -> {r['loss_last']:.3f} in {r['rounds']} rounds, "
                f"start-up {r['startup_s']:.1f} s, peak {r['peak_rss_mib']:.0f} MiB, {r['per_node_mib']:.3f} MiB/node "
                f"(ideal {r['ideal_per_node_mib']:.3f})",
                flush=True,
            )
    return rows


def _subprocess_row(
    model: str, data_dir: str, n: int, batch: int, rounds: int, fragments: int, peers: int
) -> dict[str, Any]:
    """Run one worker (``--model``) in a fresh Python process and return its JSON row, or ``{n, B, error}``."""
    cmd = [sys.executable, "-m", "benchmarks.scale", "--worker", "--model", model, "--nodes", str(n)]
    cmd += ["--data", data_dir, "--batch", str(batch), "--rounds", str(rounds), "--fragments", str(fragments)]
    cmd += ["--peers", str(peers)]
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"  scale {model} n={n}: FAILED (exit {proc.returncode})", flush=True)
        return {"n": n, "B": batch, "error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(lines[-1])


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
                f"  scale n={n} B={batch}: {r['rounds_per_s']:.3f} rounds/s, node loss {r['loss_first']:.3f} -> "
                f"{r['loss_last']:.3f} in {r['rounds']} rounds, start-up {r['startup_s']:.1f} s "
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
    parser.add_argument("--model", choices=("gnlenet", "mf"), default="gnlenet")
    parser.add_argument("--data", default=None)
    parser.add_argument("--nodes", type=int, nargs="+", default=None, help="default 16 256 1024 (mf: 16 256 943)")
    parser.add_argument("--batch", type=int, default=None, help="default 8 (mf: 256)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fragments", type=int, default=8)
    parser.add_argument("--peers", type=int, default=3)
    args = parser.parse_args()
    if args.warm_cache:
        print(json.dumps(warm_cache(args.data)))
        return
    mf = args.model == "mf"
    nodes = args.nodes or (list(MF_SIZES) if mf else [16, 256, 1024])
    batch = args.batch or (256 if mf else 8)
    if args.worker:
        work = mf_worker if mf else worker
        print(json.dumps(work(args.data, nodes[0], batch, args.rounds, args.fragments, args.peers)))
        return
    go = run_mf if mf else run
    print(json.dumps(go(nodes, batch, args.rounds, args.fragments, args.peers), indent=2))


if __name__ == "__main__":
    main()
