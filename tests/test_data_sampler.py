"""Tests of NodeBatchSampler and NodeBatchCollate."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_mosaic.data import NodeBatchCollate, NodeBatchSampler, dirichlet_partition
from tests.helpers import PerSample


def _per_node(batch: list[int], num_nodes: int, batch_size: int) -> list[list[int]]:
    assert len(batch) == num_nodes * batch_size
    return [batch[i * batch_size : (i + 1) * batch_size] for i in range(num_nodes)]


def _streams(sampler: NodeBatchSampler, epochs: int) -> list[list[int]]:
    """Concatenate, per node, every index yielded over ``epochs`` epochs."""
    streams: list[list[int]] = [[] for _ in range(sampler.num_nodes)]
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in sampler:
            for node, chunk in enumerate(_per_node(batch, sampler.num_nodes, sampler.batch_size)):
                streams[node].extend(chunk)
    return streams


shards_strategy = st.lists(st.integers(1, 40), min_size=1, max_size=6).map(
    lambda sizes: [np.arange(sum(sizes[:i]), sum(sizes[: i + 1])) for i in range(len(sizes))]
)


@settings(max_examples=80, deadline=None)
@given(
    shards=shards_strategy,
    batch_size=st.integers(1, 12),
    seed=st.integers(0, 2**32),
    epochs=st.integers(1, 3),
)
def test_each_node_cycles_through_its_own_shard(shards, batch_size, seed, epochs):
    sampler = NodeBatchSampler(shards, batch_size, seed=seed)
    assert len(sampler) == math.ceil(sum(len(s) for s in shards) / (len(shards) * batch_size))
    streams = _streams(sampler, epochs)
    for node, shard in enumerate(shards):
        stream = streams[node]
        assert len(stream) == epochs * len(sampler) * batch_size
        assert set(stream) <= set(shard.tolist()), "node drew an index outside its shard"
        size = len(shard)
        for start in range(0, len(stream) - size + 1, size):  # every complete pass is a permutation
            assert sorted(stream[start : start + size]) == shard.tolist()
        tail = stream[len(stream) - len(stream) % size :]
        assert len(set(tail)) == len(tail), "no repeats inside a partial pass"


def test_batches_are_node_major_and_from_the_right_shard():
    labels = np.repeat(np.arange(10), 30)
    partition = dirichlet_partition(labels, 5, 0.3, seed=1)
    sampler = NodeBatchSampler(partition, 4, seed=0)
    for batch in sampler:
        for node, chunk in enumerate(_per_node(batch, 5, 4)):
            assert np.isin(chunk, partition[node]).all()


def test_shard_smaller_than_batch_wraps_into_next_pass():
    sampler = NodeBatchSampler([[7, 8, 9], list(range(100, 120))], batch_size=8, seed=0)
    first = next(iter(sampler))
    node0 = first[:8]
    assert sorted(node0[:3]) == [7, 8, 9] and sorted(node0[3:6]) == [7, 8, 9]
    assert len(set(node0[6:8])) == 2 and set(node0[6:8]) <= {7, 8, 9}
    second = next(x for i, x in enumerate(sampler) if i == 1)[:8]
    assert sorted(node0[6:8] + second[:1]) == [7, 8, 9]  # the third pass finishes in the next batch


def test_deterministic_and_seed_dependent():
    shards = [np.arange(0, 50), np.arange(50, 80), np.arange(80, 200)]
    a = list(NodeBatchSampler(shards, 5, seed=3))
    b = list(NodeBatchSampler(shards, 5, seed=3))
    c = list(NodeBatchSampler(shards, 5, seed=4))
    assert a == b
    assert a != c


def test_nodes_shuffle_independently():
    shards = [np.arange(0, 20), np.arange(20, 40)]
    stream0, stream1 = _streams(NodeBatchSampler(shards, 20, seed=0), 1)
    assert [i - 20 for i in stream1] != stream0


def test_set_epoch_continues_the_stream_and_reiteration_repeats():
    shards = [np.arange(0, 13), np.arange(13, 20)]
    sampler = NodeBatchSampler(shards, 3, seed=5)
    num_batches = len(sampler)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    assert list(sampler) == epoch0  # stateless: same epoch, same batches
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    for node in range(2):
        continued = [i for batch in epoch0 + epoch1 for i in _per_node(batch, 2, 3)[node]]
        assert continued == sampler.node_stream(node, 0, 2 * num_batches * 3)
    sampler.set_epoch(0)
    assert list(sampler) == epoch0


def test_len_and_num_batches():
    shards = [np.arange(10), np.arange(10, 17)]
    assert len(NodeBatchSampler(shards, 4)) == math.ceil(17 / 8)
    sampler = NodeBatchSampler(shards, 4, num_batches=7)
    assert len(sampler) == 7 and len(list(sampler)) == 7
    sampler.set_epoch(2)
    assert len(list(sampler)) == 7


def test_lightning_finds_set_epoch_through_batch_sampler_sampler():
    sampler = NodeBatchSampler([[0, 1], [2, 3]], 1)
    assert sampler.sampler is sampler  # Lightning calls dataloader.batch_sampler.sampler.set_epoch


@pytest.mark.parametrize(
    ("partition", "kwargs", "match"),
    [
        ([], {}, "partition"),
        ([[0, 1], []], {}, r"partition\[1\]"),
        ([[0, 1], [[2, 3]]], {}, r"partition\[1\]"),
        ([[0, -1]], {}, r"partition\[0\]"),
        ([[0.5, 1.0]], {}, r"partition\[0\]"),
        ([[0, 1]], {"batch_size": 0}, "batch_size"),
        ([[0, 1]], {"num_batches": 0}, "num_batches"),
        ([[0, 1]], {"seed": -3}, "seed"),
    ],
)
def test_invalid_arguments(partition, kwargs, match):
    args = {"batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        NodeBatchSampler(partition, args.pop("batch_size"), **args)


def test_set_epoch_rejects_negative():
    with pytest.raises(ValueError, match="epoch"):
        NodeBatchSampler([[0]], 1).set_epoch(-1)


class _IndexDataset(Dataset):
    """Item i is (a (2, 3) tensor filled with i, i)."""

    def __len__(self) -> int:
        return 100

    def __getitem__(self, index: int):
        return torch.full((2, 3), float(index)), index


def test_dataloader_with_collate_gives_node_batches():
    partition = dirichlet_partition(np.repeat(np.arange(4), 25), 4, 1.0, seed=0)
    sampler = NodeBatchSampler(partition, 6, seed=0)
    loader = DataLoader(_IndexDataset(), batch_sampler=sampler, collate_fn=NodeBatchCollate(4), num_workers=0)
    assert len(loader) == len(sampler)
    batches = list(loader)
    assert len(batches) == len(sampler)
    for (x, y), indices in zip(batches, sampler, strict=True):
        assert x.shape == (4, 6, 2, 3) and x.dtype == torch.float32
        assert y.shape == (4, 6) and y.dtype == torch.int64
        assert torch.equal(y.flatten(), torch.tensor(indices))
        assert torch.equal(x[:, :, 0, 0].long(), y)
        for node in range(4):
            assert np.isin(y[node].numpy(), partition[node]).all()


def test_collate_pickles_and_works_in_a_worker():
    collate = pickle.loads(pickle.dumps(NodeBatchCollate(2)))
    dataset = TensorDataset(torch.arange(40.0).reshape(20, 2), torch.arange(20))
    sampler = NodeBatchSampler([np.arange(10), np.arange(10, 20)], 3, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=1)
    x, y = next(iter(loader))
    assert x.shape == (2, 3, 2) and y.shape == (2, 3)
    assert (y[0] < 10).all() and (y[1] >= 10).all()


def test_collate_handles_nested_structures():
    collate = NodeBatchCollate(2)
    batch = [{"x": torch.ones(5), "pair": (i, torch.zeros(1))} for i in range(6)]
    out = collate(batch)
    assert out["x"].shape == (2, 3, 5)
    assert out["pair"][0].shape == (2, 3)
    assert out["pair"][1].shape == (2, 3, 1)


def test_collate_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="num_nodes=3"):
        NodeBatchCollate(3)([(torch.zeros(2), 0)] * 4)
    with pytest.raises(ValueError, match="num_nodes"):
        NodeBatchCollate(0)
    with pytest.raises(TypeError, match="collate_fn must be callable"):
        NodeBatchCollate(2, collate_fn="default")  # type: ignore[arg-type]


def test_collate_error_on_a_plain_loader_says_how_to_build_node_batches():
    dataset = TensorDataset(torch.arange(10.0).reshape(5, 2), torch.arange(5))
    loader = DataLoader(dataset, batch_size=5, collate_fn=NodeBatchCollate(2))  # 5 samples, not 2 * B
    with pytest.raises(ValueError, match="batch of 5 samples") as info:
        next(iter(loader))
    message = str(info.value)
    assert "batch_sampler=NodeBatchSampler(...)" in message and "collate_fn=NodeBatchCollate(n)" in message
    assert "NodeDataModule.from_datasets" in message


def _pad_collate(batch):
    """A user collate_fn: pad variable-length sequences to ``(N, T_max)`` and keep their lengths."""
    sequences = [torch.as_tensor(seq) for seq, _ in batch]
    padded = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True)
    return {"tokens": padded, "length": torch.tensor([len(s) for s in sequences]), "y": [y for _, y in batch]}


def test_collate_wraps_the_users_collate_fn():
    batch = [(list(range(1 + i % 3)), f"s{i}") for i in range(6)]
    out = NodeBatchCollate(2, _pad_collate)(batch)
    assert out["tokens"].shape == (2, 3, 3) and out["length"].tolist() == [[1, 2, 3], [1, 2, 3]]
    assert out["y"] == [f"s{i}" for i in range(6)]  # non-tensor leaves pass through unchanged
    assert torch.equal(out["tokens"][1, 2], torch.tensor([0, 1, 2]))  # sample 5 is node 1's third
    collate = pickle.loads(pickle.dumps(NodeBatchCollate(2, _pad_collate)))
    assert collate(batch)["tokens"].shape == (2, 3, 3)


def test_collate_rejects_a_collated_tensor_without_one_row_per_sample():
    def flat_collate(batch):  # concatenates the samples: 2 rows per sample, not one
        return {"x": torch.cat([x for x, _ in batch])}

    batch = [(torch.zeros(2, 4), 0)] * 4
    with pytest.raises(ValueError, match=r"\['x'\] of shape \(8, 4\).*first dimension 4"):
        NodeBatchCollate(2, flat_collate)(batch)


def test_node_data_loader_resumes_inside_an_epoch():
    from lightning_mosaic.data.sampler import NodeDataLoader

    data = torch.arange(40).float()
    sampler = NodeBatchSampler([list(range(0, 20)), list(range(20, 40))], batch_size=2, seed=0, num_batches=5)
    sampler.set_epoch(1)
    reference = [batch.tolist() for batch in NodeDataLoader(data, batch_sampler=sampler)]
    steps = [10, 2]  # (optimizer steps, batches per step)
    loader = NodeDataLoader(data, batch_sampler=sampler, steps=lambda: tuple(steps))
    assert loader.state_dict() == {"epoch": 1, "batches": 0}  # not iterated yet
    iterator = iter(loader)  # the epoch starts at step 10
    next(iterator)
    steps[0] = 11  # one optimizer step of 2 batches (the second batch is only prefetched by Lightning)
    assert loader.state_dict() == {"epoch": 1, "batches": 2}
    steps[0] = 13
    assert loader.state_dict() == {"epoch": 1, "batches": 5}  # at most the epoch's length
    del iterator
    loader.load_state_dict({"epoch": 1, "batches": 3})
    assert [batch.tolist() for batch in loader] == reference[3:]
    assert [batch.tolist() for batch in loader] == reference  # the offset applies to one iteration only
    # A finished epoch (a checkpoint at its end): Lightning restarts it, with nothing left, then starts the next one
    # (passing set_epoch one more than in a run that was not interrupted).
    loader.load_state_dict({"epoch": 1, "batches": 5})
    loader.batch_sampler.set_epoch(2)
    assert [b.tolist() for b in loader] == []
    loader.batch_sampler.set_epoch(3)
    sampler_next = NodeBatchSampler([list(range(0, 20)), list(range(20, 40))], batch_size=2, seed=0, num_batches=5)
    sampler_next.set_epoch(2)
    assert [b.tolist() for b in loader] == [b.tolist() for b in NodeDataLoader(data, batch_sampler=sampler_next)]
    with pytest.raises(TypeError, match="NodeBatchSampler"):
        NodeDataLoader(data, batch_size=2)


def _reference_batches(partition, batch_size: int, seed: int, first: int, count: int) -> list[list[int]]:
    """Batches ``first .. first + count - 1`` of the stream definition, one pass at a time: pass ``p`` of node ``i`` is
    its shard permuted by ``torch.randperm`` under a fresh generator seeded ``derive_seed(seed, 5, i, p)``."""
    from lightning_mosaic.seeding import SAMPLER_STREAM, derive_seed

    def position(node: int, q: int) -> int:
        shard = np.asarray(partition[node])
        generator = torch.Generator().manual_seed(derive_seed(seed, SAMPLER_STREAM, node, q // len(shard)))
        return int(shard[torch.randperm(len(shard), generator=generator)[q % len(shard)]])

    return [
        [position(i, q) for i in range(len(partition)) for q in range(t * batch_size, (t + 1) * batch_size)]
        for t in range(first, first + count)
    ]


def test_streams_are_the_per_pass_seeded_permutations_bit_for_bit_over_epochs_and_after_a_resume(monkeypatch):
    """The sampler derives all of a batch's (node, pass) seeds at once: the batches stay those of one derive_seed
    and one fresh generator per pass (seeded runs and checkpoints keep their batches)."""
    from lightning_mosaic.data import sampler as sampler_module
    from lightning_mosaic.data.shard_sampler import NodeShardSampler
    from lightning_mosaic.seeding import derive_seeds

    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return derive_seeds(*args, **kwargs)

    monkeypatch.setattr(sampler_module, "derive_seeds", counted)
    rng = np.random.default_rng(1)
    # shards of 1, 2 and 3 samples wrap several times into a batch of 4; 50 spans several batches per pass
    partition = [rng.choice(1000, size=k, replace=False) for k in (1, 2, 3, 7, 50, 5)]
    seed = 2**40 + 11
    sampler = NodeBatchSampler(partition, 4, seed=seed, num_batches=3)
    got = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        got.extend(sampler)
    assert got == _reference_batches(partition, 4, seed, 0, 9)
    assert len(calls) == 9  # one vectorized derivation per batch, none per pass
    resumed = NodeBatchSampler(partition, 4, seed=seed, num_batches=3)
    resumed.resume(1, 2)  # a checkpoint after batch 2 of epoch 1
    resumed.set_epoch(0)
    after = list(resumed)
    resumed.set_epoch(1)
    after += list(resumed)
    assert after == _reference_batches(partition, 4, seed, 5, 4)
    assert sampler.node_stream(4, 45, 60) == [
        _reference_batches(partition, 1, seed, q, 1)[0][4] for q in range(45, 105)
    ]
    shard = NodeShardSampler(partition, rank=2, seed=seed, samples_per_epoch=5)
    shard.set_epoch(2)
    assert list(shard) == [_reference_batches(partition, 1, seed, q, 1)[0][2] for q in range(10, 15)]


def _tensor_datasets():
    from lightning_mosaic.data.images import InMemoryImageDataset
    from lightning_mosaic.data.movielens import RatingsDataset

    g = torch.Generator().manual_seed(0)
    pairs = torch.stack([torch.arange(60) % 7, torch.arange(60) % 11], dim=1)
    images = torch.randint(0, 256, (60, 3, 4, 4), dtype=torch.uint8, generator=g)
    return {
        "TensorDataset": TensorDataset(torch.randn(60, 3, generator=g), torch.arange(60) % 4, torch.randn(60, 2, 2)),
        "RatingsDataset": RatingsDataset(pairs, torch.randint(1, 6, (60,), generator=g).float()),
        "InMemoryImageDataset": InMemoryImageDataset(images, torch.arange(60) % 10),
    }


def _assert_same_batch(new, old):
    assert type(new) is type(old) and len(new) == len(old)
    for a, b in zip(new, old, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("name", ["TensorDataset", "RatingsDataset", "InMemoryImageDataset"])
def test_gathered_node_batches_equal_the_per_sample_path_bit_for_bit_and_after_a_resume(name):
    from lightning_mosaic.data import NodeDataLoader
    from lightning_mosaic.data.gather import GatheredSamples, batched

    dataset = _tensor_datasets()[name]
    # uneven shards, one smaller than the batch (it wraps into its next pass within a batch)
    partition = [np.arange(0, 4), np.arange(4, 30), np.arange(30, 60)]

    def loaders():
        sampler = lambda: NodeBatchSampler(partition, 6, seed=3, num_batches=4)  # noqa: E731
        new = NodeDataLoader(batched(dataset), batch_sampler=sampler(), collate_fn=NodeBatchCollate(3))
        old = NodeDataLoader(PerSample(dataset), batch_sampler=sampler(), collate_fn=NodeBatchCollate(3))
        return new, old

    new, old = loaders()
    assert isinstance(new.dataset.__getitems__([0, 5]), GatheredSamples)  # the batched fetch is the one used
    for epoch in range(3):
        new.batch_sampler.set_epoch(epoch)
        old.batch_sampler.set_epoch(epoch)
        old_batches = list(old)
        for a, b in zip(new, old_batches, strict=True):
            _assert_same_batch(a, b)
    resumed, _ = loaders()
    resumed.load_state_dict({"epoch": 2, "batches": 1})
    resumed_batches = list(resumed)
    assert len(resumed_batches) == 3
    for a, b in zip(resumed_batches, old_batches[1:], strict=True):
        _assert_same_batch(a, b)
    resumed.batch_sampler.set_epoch(3)  # and the next epoch after it
    old.batch_sampler.set_epoch(3)
    for a, b in zip(resumed, old, strict=True):
        _assert_same_batch(a, b)


def test_node_collate_takes_a_gathered_batch_as_it_is_and_other_collate_fns_read_its_samples():
    from lightning_mosaic.data import TensorRowsDataset

    dataset = TensorRowsDataset(torch.arange(24.0).reshape(12, 2), torch.arange(12))
    gathered = dataset.__getitems__([3, 1, 4, 1, 5, 9])
    assert len(gathered) == 6
    x, y = NodeBatchCollate(2)(gathered)
    assert x.shape == (2, 3, 2) and y.shape == (2, 3)
    assert x.data_ptr() == gathered.collated[0].data_ptr()  # reshaped views of the gathered rows, no copy
    per_sample = [dataset[i] for i in [3, 1, 4, 1, 5, 9]]
    _assert_same_batch(NodeBatchCollate(2)(per_sample), [x, y])
    # another collate function reads the samples one by one: the very samples dataset[i] gives
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(gathered, per_sample, strict=True))
    pairs = NodeBatchCollate(2, lambda batch: {"x": torch.stack([s[0] for s in batch])})(gathered)
    assert torch.equal(pairs["x"], x)
    # in a worker process the collate runs there: the same batches come back
    sampler = NodeBatchSampler([np.arange(6), np.arange(6, 12)], 4, seed=0, num_batches=3)
    workers = DataLoader(dataset, batch_sampler=sampler, collate_fn=NodeBatchCollate(2), num_workers=1)
    plain = DataLoader(PerSample(dataset), batch_sampler=sampler, collate_fn=NodeBatchCollate(2))
    for a, b in zip(workers, plain, strict=True):
        _assert_same_batch(a, b)


def test_batched_gives_plain_tensor_datasets_the_gathered_fetch_and_leaves_others():
    from torch.utils.data import Subset

    from lightning_mosaic.data import TensorRowsDataset
    from lightning_mosaic.data.gather import GatheredSamples, batched

    plain = TensorDataset(torch.randn(10, 3), torch.arange(10))
    rows = batched(plain)
    assert isinstance(rows, TensorRowsDataset) and all(a is b for a, b in zip(rows.tensors, plain.tensors))
    assert len(rows) == 10 and all(torch.equal(a, b) for a, b in zip(rows[7], plain[7], strict=True))
    subset = batched(Subset(plain, [9, 2, 5]))
    assert isinstance(subset, Subset) and isinstance(subset.dataset, TensorRowsDataset)
    gathered = subset.__getitems__([0, 2])
    assert isinstance(gathered, GatheredSamples) and torch.equal(gathered.collated[1], torch.tensor([9, 5]))

    class OwnItems(TensorDataset):  # a subclass may define other items: left alone
        def __getitem__(self, index):
            return self.tensors[0][index] * 2

    own, other = OwnItems(torch.ones(3)), _IndexDataset()
    assert batched(own) is own and batched(other) is other
    untouched = Subset(other, [1, 2])
    assert batched(untouched) is untouched
    # the data modules' loaders apply it (with the default collate; a user's collate reads samples one by one anyway)
    from lightning_mosaic.data import NodeDataModule

    dm = NodeDataModule.from_datasets(plain, plain, num_nodes=2, batch_size=3)
    dm.setup()
    assert isinstance(dm.train_dataloader().dataset, TensorRowsDataset)
    assert isinstance(dm.val_dataloader().dataset, TensorRowsDataset)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 3) and torch.equal(x, plain.tensors[0][y])
    own_collate = NodeDataModule.from_datasets(plain, plain, num_nodes=2, batch_size=3, collate_fn=_pad_collate)
    own_collate.setup()
    assert own_collate.train_dataloader().dataset is plain
