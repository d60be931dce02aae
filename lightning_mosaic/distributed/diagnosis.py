"""Which ranks stopped answering, when a collective fails. Pure ``torch.distributed`` code.

After a failed collective, every surviving rank writes a key for the failed round into the process group's key-value
store (the ``TCPStore`` that rendezvous created, hosted by rank 0) and waits briefly for the others; ranks whose key
never appears died or hang. Nothing is written in the normal path, so this costs nothing until something fails.
"""

from __future__ import annotations

import time

import torch.distributed as dist


def unresponsive_ranks(tag: str, wait_s: float = 5.0) -> list[int] | None:
    """Ranks that did not report ``tag`` (e.g. ``"round-12"``) within ``wait_s`` seconds; call it on every rank.

    Args:
        tag: Names the failed operation; the same on every rank.
        wait_s: Seconds to wait for the other ranks (they usually hit the same failure within milliseconds).

    Returns:
        The sorted ranks that never reported, or ``None`` if the store itself is unreachable (e.g. rank 0, which
        hosts it, is the one that died) or no process group is initialized.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        store = dist.distributed_c10d._get_default_store()
        rank, world = dist.get_rank(), dist.get_world_size()
        keys = [f"lightning_mosaic/failed/{tag}/{r}" for r in range(world)]
        store.set(keys[rank], "1")
        deadline = time.monotonic() + wait_s
        while True:
            missing = [r for r in range(world) if not store.check([keys[r]])]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.1)
    except Exception:  # the store is gone with the rank that hosted it, or was never reachable
        return None
