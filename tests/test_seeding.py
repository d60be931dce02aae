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
