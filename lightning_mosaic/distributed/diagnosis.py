"""Which ranks stopped answering, when a collective fails. Pure ``torch.distributed`` code.

After a failed collective, every surviving rank writes a key for the failed round into the process group's key-value
store (the ``TCPStore`` that rendezvous created, hosted by rank 0) and waits briefly for the others; ranks whose key
never appears died or hang. Nothing is written in the normal path, so this costs nothing until something fails.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch.distributed as dist


class CommunicationError(RuntimeError):
    """A collective of a multi-process run failed: another rank died, hung past the timeout, or the network failed.

    The message names this rank, the operation and the global step, and which ranks did not reach it.
    """


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


def describe_failure(error: BaseException, what: str, tag: str) -> str:
    """``"rank R of W: WHAT failed: WHO. Cause: ERROR"``, where WHO names the ranks that did not report ``tag``
    (:func:`unresponsive_ranks`; every surviving rank must call it with the same ``tag``)."""
    missing = unresponsive_ranks(tag)
    who = (
        "the rank hosting the rendezvous store (rank 0) is unreachable"
        if missing is None
        else f"rank(s) {missing} did not reach it (died, hung or were killed; see their logs)"
        if missing
        else "every rank reached it (a network or backend failure)"
    )
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    return f"rank {rank} of {world}: {what} failed: {who}. Cause: {error}"


@contextlib.contextmanager
def diagnosed(what: str, tag: str, error_type: type[CommunicationError] = CommunicationError) -> Iterator[None]:
    """Run one or more collectives; if one fails, raise ``error_type`` naming the ranks that did not reach it.

    Args:
        what: The operation, for the message (e.g. ``"the all-reduce of train/loss at global step 6"``).
        tag: Names the operation in the store; the same on every rank (e.g. ``"train-loss-6"``).
        error_type: :class:`CommunicationError` or a subclass of it.

    Raises:
        CommunicationError: (``error_type``) from the ``RuntimeError`` (e.g. ``torch.distributed.DistBackendError``)
            of the failed collective.
    """
    try:
        yield
    except CommunicationError:
        raise
    except RuntimeError as error:  # DistBackendError is a RuntimeError
        raise error_type(describe_failure(error, what, tag)) from error
