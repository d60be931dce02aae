"""Bad input to the public constructors: a clear error naming the parameter, the value and what is allowed."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from lightning_mosaic import MosaicGossip, MosaicModule, MosaicStrategy, ReplicaStack
from lightning_mosaic.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    MovieLensDataModule,
    NodeBatchCollate,
    NodeBatchSampler,
    NodeDataModule,
    NodeShardSampler,
    dirichlet_partition,
)
from lightning_mosaic.gossip.faults import NodeFaults
from lightning_mosaic.models import MLP, GNLeNet, MatrixFactorization

EMPTY, TEN = TensorDataset(torch.zeros(0, 2)), TensorDataset(torch.zeros(10, 2))

CASES = [
    (lambda: MosaicModule(MLP, 1), ValueError, r"num_nodes must be an integer >= 2, got 1"),
    (lambda: MosaicModule(MLP, "8"), ValueError, r"num_nodes must be an integer >= 2, got '8' \(str\)"),
    (lambda: MosaicModule(MLP, 4, seed=-1), ValueError, r"seed must be an integer >= 0, got -1"),
    (lambda: MosaicModule(MLP, 4, init="copy"), ValueError, r"init must be one of \('same', 'independent'\)"),
    (lambda: MosaicModule(MLP, 4, execution="gpu"), ValueError, r"execution must be one of .*got 'gpu'"),
    (lambda: MosaicModule(3, 4), TypeError, r"model must be an nn.Module or a callable returning one"),
    (lambda: ReplicaStack(MLP(), 0), ValueError, r"num_nodes must be an integer >= 1, got 0"),
    (lambda: MosaicGossip(fragments=0), ValueError, r"fragments must be an integer >= 1, got 0"),
    (lambda: MosaicGossip(peers=1.5), ValueError, r"peers must be an integer >= 1, got 1.5 \(float\)"),
    (
        lambda: MosaicGossip(topology="rign"),
        ValueError,
        r"topology must be one of \('el-local', 'el-oracle', 'ring'.*"
        r"got 'rign'; did you mean 'ring'\?",
    ),
    (lambda: MosaicGossip(fragmentation="x"), ValueError, r"fragmentation must be one of"),
    (lambda: MosaicGossip(kernel="sparse"), ValueError, r"kernel must be one of \(.*\), got 'sparse'"),
    (lambda: MosaicGossip(drop_prob=2), ValueError, r"drop_prob must be a probability in \[0, 1\], got 2"),
    (lambda: MosaicGossip(on_nonfinite="ignore"), ValueError, r"on_nonfinite must be one of \('raise', 'isolate'\)"),
    (lambda: MosaicGossip(every_n_steps=0), ValueError, r"every_n_steps must be an integer >= 1, got 0"),
    (lambda: MosaicStrategy(timeout=-1), ValueError, r"timeout must be a positive number of seconds"),
    (lambda: NodeFaults(4, availability=-0.5), ValueError, r"availability must be a probability in \[0, 1\]"),
    (lambda: DigitsDataModule(1), ValueError, r"num_nodes must be an integer >= 2, got 1"),
    (lambda: DigitsDataModule(4, alpha=0), ValueError, r"alpha must be a float > 0.*got 0"),
    (lambda: DigitsDataModule(4, batch_size=0), ValueError, r"batch_size must be an integer >= 1, got 0"),
    (lambda: DigitsDataModule(4, test_fraction=2.0), ValueError, r"test_fraction must be a float in \(0, 1\); got 2.0"),
    (lambda: CIFAR10DataModule(data_dir=None, num_nodes=4), ValueError, r"data_dir must be a non-empty path"),
    (lambda: CIFAR100DataModule(data_dir="", num_nodes=4), ValueError, r"data_dir must be a non-empty path"),
    (lambda: MovieLensDataModule("d", num_nodes=4, variant="10m"), ValueError, r"variant must be .auto.*got .10m."),
    (lambda: NodeBatchSampler([[0, 1], []], 2), ValueError, r"partition\[1\] must be a non-empty 1-D index array"),
    (lambda: NodeBatchSampler([[0, 1]], 2, nodes=range(1, 3)), ValueError, r"nodes must be a non-empty range"),
    (lambda: NodeShardSampler([[0], [1]], rank=5), ValueError, r"rank must be an integer in \[0, 1\]"),
    (lambda: NodeBatchCollate(2, collate_fn=1), TypeError, r"collate_fn must be callable or None; got 1"),
    (lambda: NodeDataModule.from_datasets(EMPTY, TEN, num_nodes=2), ValueError, r"train_dataset is empty"),
    (lambda: NodeDataModule.from_datasets(TEN, TEN, num_nodes=2, labels=[0]), ValueError, r"labels must have one"),
    (lambda: NodeDataModule.from_datasets(TEN, TEN, num_nodes=2, alpha=1.0), ValueError, r"alpha=1.0 .*labels="),
    (lambda: dirichlet_partition([0, 1, 2], 2, alpha=-1.0), ValueError, r"alpha must be a float > 0"),
    (lambda: MLP(hidden=(0,)), ValueError, r"positive hidden widths, got .*hidden=\(0,\)"),
    (lambda: GNLeNet(num_classes=1), ValueError, r"num_classes must be >= 2, got 1"),
    (lambda: MatrixFactorization(0, 10), ValueError, r"num_users"),
]


@pytest.mark.parametrize(("make", "error", "match"), CASES, ids=[c[2][:40] for c in CASES])
def test_bad_constructor_argument_names_parameter_and_value(make, error, match):
    with pytest.raises(error, match=match):
        make()
