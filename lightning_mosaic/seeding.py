"""Seed derivation: every random stream of a run, derived from one seed. Pure NumPy (no torch, no Lightning).

A stream is named by a path of non-negative ints: its first element says which kind of randomness it is (the
``*_STREAM`` constants below, one per owner), the following ones which draw of that kind (a round, a step, a node
and a pass). :func:`derive_seed` maps ``(seed, path)`` to a 63-bit int for ``torch.Generator.manual_seed`` with
``numpy.random.SeedSequence(seed, spawn_key=path)``, so distinct paths give independent streams and no stream
depends on the order in which the others are drawn. :func:`derive_seeds` computes the same seeds for many paths at
once (vectorized over the paths: the sampler needs thousands per batch).

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
    "derive_seeds",
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


# numpy.random.SeedSequence's hash (NumPy's bit_generator.pyx, after Melissa O'Neill's seed_seq_fe): its constants.
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R, _XSHIFT, _MASK32, _POOL_SIZE = 0xCA01F9DD, 0x4973F715, 16, 0xFFFFFFFF, 4


def _words(value: int) -> list[int]:
    """``value`` as little-endian 32-bit words, as ``SeedSequence`` reads an int (0 is one word)."""
    words = [value & _MASK32] if value == 0 else []
    while value > 0:
        words.append(value & _MASK32)
        value >>= 32
    return words


def derive_seeds(seed: int, *prefix: int, last: np.ndarray | list[int]) -> np.ndarray:
    """:func:`derive_seed` of many paths at once: ``[derive_seed(seed, *prefix, *row) for row in last]``.

    The same 63-bit seeds, bit for bit (``numpy.random.SeedSequence``'s hash, computed with vectorized uint32
    arithmetic over the paths instead of one ``SeedSequence`` per path).

    Args:
        seed: The run's seed, an int >= 0.
        *prefix: The path elements shared by every path (ints >= 0), e.g. ``SAMPLER_STREAM``.
        last: The elements that differ: ints >= 0 shaped ``(m,)`` (one more element per path) or ``(m, k)`` (k more),
            e.g. ``(node, pass)`` rows. Paths of more than one element in all.

    Returns:
        int64 array ``(m,)``, every value in ``[0, 2**63)``.

    Raises:
        ValueError: If ``seed``, an element of ``prefix`` or of ``last`` is negative, ``last`` is not 1-D or 2-D
            integers, or the path is empty (no ``prefix`` and ``last`` of zero columns).
    """
    rows = np.asarray(last)
    if rows.ndim == 1:
        rows = rows[:, None]
    if rows.ndim != 2 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
        raise ValueError(f"last must be (m,) or (m, k) integers, got shape {rows.shape} of {rows.dtype}")
    if not prefix and rows.shape[1] == 0:
        raise ValueError("derive_seeds needs a stream path of at least one int, e.g. derive_seeds(seed, last=[1])")
    seed = int(seed)
    if seed < 0 or any(int(p) < 0 for p in prefix) or (rows.size and rows.min() < 0):
        raise ValueError(f"seed and path elements must be >= 0; got seed {seed}, prefix {prefix}")
    if rows.size and rows.max() > _MASK32:  # a path element of several words: per path, as SeedSequence reads it
        return np.array([derive_seed(seed, *prefix, *map(int, row)) for row in rows], dtype=np.int64)
    m = rows.shape[0]
    run = _words(seed)
    run += [0] * (_POOL_SIZE - len(run))  # SeedSequence pads the run entropy to the pool size before a spawn key
    shared = run + [w for p in prefix for w in _words(int(p))]
    entropy = [np.full(m, w, dtype=np.uint32) for w in shared] + [c.astype(np.uint32) for c in rows.T]
    hash_const = _INIT_A

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal hash_const
        value = value ^ np.uint32(hash_const)
        hash_const = hash_const * _MULT_A & _MASK32
        value = value * np.uint32(hash_const)
        return value ^ (value >> np.uint32(_XSHIFT))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = np.uint32(_MIX_MULT_L) * x - np.uint32(_MIX_MULT_R) * y
        return result ^ (result >> np.uint32(_XSHIFT))

    with np.errstate(over="ignore"):  # uint32 arithmetic wraps modulo 2**32, as in SeedSequence
        pool = [hashmix(entropy[i]) for i in range(_POOL_SIZE)]  # the entropy is at least the pool size
        for src in range(_POOL_SIZE):
            for dst in range(_POOL_SIZE):
                if src != dst:
                    pool[dst] = mix(pool[dst], hashmix(pool[src]))
        for src in range(_POOL_SIZE, len(entropy)):
            for dst in range(_POOL_SIZE):
                pool[dst] = mix(pool[dst], hashmix(entropy[src]))
        state, hash_const = [], _INIT_B  # generate_state(2): the first two pool words, hashed
        for word in pool[:2]:
            word = word ^ np.uint32(hash_const)
            hash_const = hash_const * _MULT_B & _MASK32
            word = word * np.uint32(hash_const)
            state.append(word ^ (word >> np.uint32(_XSHIFT)))
    return (state[0].astype(np.int64) << 31) | (state[1] >> np.uint32(1)).astype(np.int64)
