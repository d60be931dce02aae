"""One seed derivation for every random stream (lightning_mosaic.seeding)."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_mosaic import seeding
from lightning_mosaic.seeding import derive_seed


def _spawn_key_seed(seed: int, *path: int) -> int:
    state = np.random.SeedSequence(seed, spawn_key=path).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


@pytest.mark.parametrize("path", [(0,), (1,), (2,), (3, 7), (4, 123), (5, 2, 9)])
def test_derive_seed_is_the_spawn_key_seed_of_the_gossip_streams(path):
    """The gossip, fault and initialization streams are those of every release (bit for bit)."""
    for seed in (0, 1, 12345):
        value = derive_seed(seed, *path)
        assert value == _spawn_key_seed(seed, *path)
        assert 0 <= value < 2**63


def test_known_values():
    assert derive_seed(3, 1) == 3533516214141361821
    assert derive_seed(0, 0) == _spawn_key_seed(0, 0)


def test_streams_are_distinct_and_need_a_path():
    names = [name for name in seeding.__all__ if name.endswith("_STREAM")]
    values = [getattr(seeding, name) for name in names]
    assert len(set(values)) == len(values)
    assert derive_seed(0, 3, 1) != derive_seed(0, 5, 3, 1)  # churn round 1 vs. node 3, pass 1 of the sampler
    with pytest.raises(ValueError, match="stream path"):
        derive_seed(0)


def test_derive_seeds_equals_derive_seed_for_every_path_bit_for_bit():
    """The vectorized derivation (the sampler's thousands of (node, pass) seeds per batch) is derive_seed's."""
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 2**32, size=(40, 2))
    rows[:4] = [[0, 0], [0, 1], [2**32 - 1, 7], [3, 2**32 - 1]]  # the largest one-word elements
    for seed in (0, 1, 12345, 2**32 - 1, 2**32, 2**70 + 3):  # seeds of one, two and three 32-bit words
        for prefix in ((), (5,), (5, 3), (2**33,)):
            expected = [derive_seed(seed, *prefix, *map(int, row)) for row in rows]
            assert seeding.derive_seeds(seed, *prefix, last=rows).tolist() == expected
            expected = [derive_seed(seed, *prefix, int(v)) for v in rows[:, 0]]
            assert seeding.derive_seeds(seed, *prefix, last=rows[:, 0]).tolist() == expected
    wide = np.array([[2**40, 1], [1, 2]])  # an element of two words: derived per path, the same seeds
    assert seeding.derive_seeds(7, 5, last=wide).tolist() == [derive_seed(7, 5, *map(int, row)) for row in wide]
    assert seeding.derive_seeds(0, 5, last=np.empty((0, 2), dtype=np.int64)).shape == (0,)
    with pytest.raises(ValueError, match="stream path"):
        seeding.derive_seeds(0, last=np.empty((3, 0), dtype=np.int64))
    with pytest.raises(ValueError, match=">= 0"):
        seeding.derive_seeds(0, 5, last=[[1, -1]])
    with pytest.raises(ValueError, match="integers"):
        seeding.derive_seeds(0, 5, last=[[1.5, 2.0]])
