"""Shared helpers of the benchmark suite: machine description, interleaved timing, memory, atomic JSON."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def machine() -> dict[str, Any]:
    """The machine the numbers were measured on: platform, CPU model, cores, memory, torch and thread count."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory_gib = None
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        # cores this process may run on (fewer than "cores" under taskset or a cgroup cpuset)
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    return info


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall-clock seconds of each callable, measured in turns (A, B, C, A, B, C, ...) so that a change in
    the machine's speed (other processes on shared cores) affects every entry alike; ratios of these medians are what
    the suite reports."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def rss_bytes() -> int:
    """Current resident set size of this process in bytes (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes since it started or since the last
    :func:`reset_peak_rss` (Linux ``VmHWM``; elsewhere ``getrusage``, which cannot be reset)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset the peak resident set size to the current one (Linux: write ``5`` to ``/proc/self/clear_refs``), so
    that a later :func:`peak_rss_bytes` measures one phase only; returns whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as JSON to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fit_rounds(
    module: Any, data: Any, rounds: int, fragments: int, peers: int, losses: list[float] | None = None
) -> list[float]:
    """``Trainer.fit`` ``module`` on ``data`` (a DataModule or a train DataLoader) for ``rounds`` rounds with
    ``MosaicGossip(fragments, peers)`` on the CPU, without logger, checkpoints, progress bar or validation; returns the
    ``time.perf_counter()`` at the end of every round (after the gossip). ``losses``, if given, receives every round's
    training loss (what ``training_step`` returned: for ``MosaicModule``, the sum over nodes of each node's mean loss
    on its batch), read after the round's time."""
    from lightning.pytorch import Callback, Trainer

    from lightning_mosaic import MosaicGossip

    ends: list[float] = []

    class RoundEnds(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            ends.append(time.perf_counter())
            if losses is not None:
                losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))

    trainer = Trainer(
        max_steps=rounds,
        accelerator="cpu",
        devices=1,
        callbacks=[MosaicGossip(fragments=fragments, peers=peers, seed=0), RoundEnds()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, data)
    return ends
