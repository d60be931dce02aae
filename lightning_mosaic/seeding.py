"""Seed derivation: every random stream of a run, derived from one seed. Pure NumPy (no torch, no Lightning).

A stream is named by a path of non-negative ints: its first element says which kind of randomness it is (the
``*_STREAM`` constants below, one per owner), the following ones which draw of that kind (a round, a step, a node
and a pass). :func:`derive_seed` maps ``(seed, path)`` to a 63-bit int for ``torch.Generator.manual_seed`` with
``numpy.random.SeedSequence(seed, spawn_key=path)``, so distinct paths give independent streams and no stream
depends on the order in which the others are drawn.

====  =======================================================  ======================================
path  what                                                     owner
====  =======================================================  ======================================
0     fragmentation permutation (``fragmentation="random"``)   ``gossip.FragmentGossip``
1     per-round graphs, then message drops                     ``gossip.FragmentGossip.generator``
2     replica initialization (``2``, then one per node)        ``replicas.ReplicaStack``
3, r  churn of round r                                         ``gossip.faults.NodeFaults``
4, t  stragglers of local step t                               ``gossip.faults.NodeFaults``
5, i, p  node i's p-th permutation of its training shard       ``data.NodeBatchSampler``
6     the base graph of ``topology="regular"``, drawn once     ``gossip.graphs.make_graph``
====  =======================================================  ======================================
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BASE_GRAPH_STREAM",
    "CHURN_STREAM",
    "FRAGMENTATION_STREAM",
    "INIT_STREAM",
    "SAMPLER_STREAM",
    "STRAGGLER_STREAM",
    "TOPOLOGY_STREAM",
    "derive_seed",
]

FRAGMENTATION_STREAM = 0
"""Permutation of the coordinates into fragments."""
TOPOLOGY_STREAM = 1
"""Per-round graphs and message drops (one generator, saved in checkpoints)."""
INIT_STREAM = 2
"""Replica initialization."""
CHURN_STREAM = 3
"""Node availability, one draw per round."""
STRAGGLER_STREAM = 4
"""Stragglers, one draw per local step."""
SAMPLER_STREAM = 5
"""Per-node shuffles of the training shards, one draw per (node, pass)."""
BASE_GRAPH_STREAM = 6
"""The fixed base graph of a run (``topology="regular"``), drawn once before the first round."""


def derive_seed(seed: int, *path: int) -> int:
    """An independent 63-bit seed for the stream ``path`` of run seed ``seed``.

    Args:
        seed: The run's seed, an int >= 0.
        *path: The stream, one or more ints >= 0 (see the table in the module docstring).

    Returns:
        An int in ``[0, 2**63)``: the two first 32-bit words of
        ``numpy.random.SeedSequence(seed, spawn_key=path)``, the first shifted left by 31 bits, OR the second
        shifted right by one.

    Raises:
        ValueError: If ``path`` is empty, or ``seed`` or an element of ``path`` is negative (from NumPy).
    """
    if not path:
        raise ValueError("derive_seed needs a stream path of at least one int, e.g. derive_seed(seed, 1)")
    state = np.random.SeedSequence(int(seed), spawn_key=tuple(int(p) for p in path)).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1
