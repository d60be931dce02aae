"""LightningModules nobody here wrote, unchanged, as n nodes in one process (``MosaicModule(model=<LightningModule>)``).

Lightning's own demo classes (``BoringModel``, the demo ``LightningTransformer`` on a local text file) and a
torchvision ResNet-18 (BatchNorm) classifier with a torchmetrics ``Accuracy`` written the ordinary Lightning way,
trained on the real CIFAR-10 JPEGs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.demos import LightningTransformer, WikiText2
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_mosaic import MosaicGossip, MosaicModule
from lightning_mosaic.callbacks import MosaicSummary
from lightning_mosaic.callbacks.summary import format_summary
from lightning_mosaic.data import NodeBatchCollate, NodeBatchSampler, NodeDataModule
from tests.helpers import quiet_trainer

REPO = Path(__file__).resolve().parents[1]


def trainer(tmp_path, **kwargs) -> Trainer:
    return quiet_trainer(**{"num_sanity_val_steps": 0, "default_root_dir": tmp_path, **kwargs})


def node_loader(dataset, partition, batch_size: int, num_batches: int | None = None) -> DataLoader:
    sampler = NodeBatchSampler(partition, batch_size, num_batches=num_batches)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=NodeBatchCollate(len(partition)))


# -- Lightning's BoringModel ---------------------------------------------------------------------------------------


def test_boring_model_runs_as_nodes_with_its_optimizer_and_scheduler(tmp_path):
    n = 4
    data = NodeDataModule.from_datasets(  # unlabelled data: an IID split
        RandomDataset(32, 64), RandomDataset(32, 16), num_nodes=n, batch_size=4, steps_per_epoch=5, eval_batch_size=8
    )
    module = MosaicModule(BoringModel, num_nodes=n, init="independent")
    start = module.gossip_parameters.detach().clone()
    t = trainer(tmp_path, max_epochs=2, callbacks=[MosaicGossip(fragments=2, peers=1), MosaicSummary()])
    t.fit(module, data)
    assert t.global_step == 10
    written = json.loads((tmp_path / "summary.json").read_text())
    assert (written["nodes"], written["rounds"], written["parameters_per_node"]) == (n, 10, 66)
    assert written["metrics"]["train/loss"] == pytest.approx(float(t.callback_metrics["train/loss"]))
    # BoringModel's own SGD(lr=0.1) with StepLR(step_size=1) per epoch: 0.1 -> 0.01 -> 0.001
    optimizer = t.optimizers[0]
    assert [p for group in optimizer.param_groups for p in group["params"]] == [module.gossip_parameters]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert not torch.equal(module.gossip_parameters, start)
    assert {"train/loss", "gossip/consensus_distance"} <= set(t.callback_metrics)
    assert sum(p.numel() for p in module.parameters()) == n * 66  # the template is not a parameter


def test_boring_model_nodes_train_exactly_as_separate_models(tmp_path):
    """Without gossip, each node is its own BoringModel: the same parameters as training it alone on its shard."""
    n, data = 2, RandomDataset(32, 32)
    partition = [range(0, 16), range(16, 32)]
    template = BoringModel()
    module = MosaicModule(template, num_nodes=n)
    trainer(tmp_path, max_steps=6).fit(module, node_loader(data, partition, 4, num_batches=6))  # one epoch
    sampler = NodeBatchSampler(partition, 4, num_batches=6)
    batches = [np.asarray(b).reshape(n, 4) for _, b in zip(range(6), sampler)]
    for node in range(n):
        alone = BoringModel()
        alone.load_state_dict(template.state_dict())
        loader = DataLoader(Subset(data, [int(i) for b in batches for i in b[node]]), batch_size=4)
        trainer(tmp_path, max_steps=6).fit(alone, loader)
        torch.testing.assert_close(module.node_state_dict(node), alone.state_dict(), rtol=1e-6, atol=1e-7)


# -- Lightning's demo Transformer on a local text file --------------------------------------------------------------


def test_demo_transformer_trains_as_nodes_on_a_local_text_file(tmp_path):
    text = "\n".join(p.read_text() for p in sorted((REPO / "docs").glob("*.md")))
    (tmp_path / "wikitext-2.txt").write_text(text)
    dataset = WikiText2(data_dir=tmp_path, block_size=16, download=False)
    n = 4
    data = NodeDataModule.from_datasets(dataset, dataset, num_nodes=n, batch_size=4)  # (inputs, target) blocks
    model = LightningTransformer(vocab_size=dataset.vocab_size)
    model.model = type(model.model)(vocab_size=dataset.vocab_size, ninp=32, nhead=2, nhid=32, nlayers=1)
    module = MosaicModule(model, num_nodes=n)

    losses: list[float] = []

    class Losses(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(trainer.callback_metrics["train/loss"]))

    t = trainer(tmp_path, max_steps=30, callbacks=[MosaicGossip(fragments=4, peers=2), Losses(), MosaicSummary()])
    t.fit(module, data)
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3  # it learns
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["nodes"] == n and written["rounds"] == 30 and written["metrics"]["train/loss"] == losses[-1]
    dropout = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropout  # the demo Transformer has dropout: its eval mode matters
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    module.eval()
    with torch.no_grad():
        first = module.replicas.call_node(0, lambda m, b: m(*b), batch)
        second = module.replicas.call_node(0, lambda m, b: m(*b), batch)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


# -- a torchvision ResNet-18 (BatchNorm) classifier with torchmetrics, the ordinary Lightning way --------------------


class ResNetClassifier(LightningModule):
    """How a user writes a CIFAR-10 classifier, with no knowledge of lightning_mosaic."""

    def __init__(self, num_classes: int = 10, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torchvision.models.resnet18(num_classes=num_classes)
        self.train_acc = MulticlassAccuracy(num_classes=num_classes)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_acc.update(logits, y)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", self.val_acc)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)}


def cifar_subset(root: Path, split: str, count: int, seed: int) -> Subset:
    """A random subset of the real CIFAR-10 JPEGs as a torchvision ImageFolder (its labels are its ``targets``)."""
    folder = torchvision.datasets.ImageFolder(root / "cifar10" / split, transform=torchvision.transforms.ToTensor())
    chosen = np.random.default_rng(seed).choice(len(folder), size=count, replace=False)
    return Subset(folder, sorted(int(i) for i in chosen))


@pytest.mark.slow
def test_resnet18_with_torchmetrics_on_cifar10_as_nodes(cifar10_dir, tmp_path):
    n = 4
    train, test = cifar_subset(cifar10_dir, "train", 400, seed=0), cifar_subset(cifar10_dir, "test", 48, seed=1)
    data = NodeDataModule.from_datasets(train, test, num_nodes=n, alpha=0.5, batch_size=4, eval_batch_size=16)
    model = ResNetClassifier()
    module = MosaicModule(model, num_nodes=n)
    summary = MosaicSummary()
    t = trainer(tmp_path, max_steps=4, callbacks=[MosaicGossip(fragments=4, peers=2), summary])
    t.fit(module, data)
    tracked = module.replicas.stacked_buffers()["net.bn1.num_batches_tracked"]
    assert tracked.tolist() == [4] * n  # per-node BatchNorm statistics, one update per local step
    metrics = t.callback_metrics
    assert {"train_loss", "train_loss/node_std", "train_acc", "train_acc/node_std"} <= set(metrics)
    buffers = {k: v.clone() for k, v in module.replicas.stacked_buffers().items()}
    evaluator = trainer(tmp_path)
    first = evaluator.validate(module, data, verbose=False)[0]
    second = evaluator.validate(module, data, verbose=False)[0]
    assert first == second  # deterministic evaluation (BatchNorm running statistics, no batch statistics)
    for name, value in module.replicas.stacked_buffers().items():
        assert torch.equal(value, buffers[name]), name
    for name in ("val_acc", "val_loss"):
        assert {name, f"{name}/node_std", f"{name}/avg_model"} <= set(first)
    # summary.json of the fit, rewritten by the validation that followed it: the node-level values are in it
    t.validate(module, data, verbose=False)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["nodes"] == n and written["rounds"] == 4 and written["validated_step"] == 4
    for name in ("val_acc", "val_acc/node_std", "val_acc/avg_model"):
        assert written["metrics"][name] == pytest.approx(float(t.callback_metrics[name])), name
    assert written["metrics"]["val_acc"] == pytest.approx(first["val_acc"])
    assert "val_acc (node mean)" in format_summary(written)
    # the node mean is the mean of the exported nodes' own accuracies
    images = torch.stack([image for image, _ in test])
    labels = torch.tensor([label for _, label in test])
    accuracies = []
    for node in range(n):
        alone = ResNetClassifier()
        alone.load_state_dict({**alone.state_dict(), **module.node_state_dict(node)}, strict=True)
        with torch.no_grad():
            logits = alone.eval()(images)
        accuracies.append(float(MulticlassAccuracy(num_classes=10)(logits, labels)))
    assert first["val_acc"] == pytest.approx(np.mean(accuracies), abs=1e-6)
    assert first["val_acc/node_std"] == pytest.approx(np.std(accuracies), abs=1e-6)
    # its configure_optimizers is honoured: momentum state per coordinate on the (n, d) rows
    state = t.optimizers[0].state[module.gossip_parameters]
    assert state["momentum_buffer"].shape == module.gossip_parameters.shape


# -- bad input -----------------------------------------------------------------------------------------------------


class Linear(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x).squeeze(-1), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def linear_data(n: int = 2) -> DataLoader:
    dataset = TensorDataset(torch.randn(32, 4), torch.randn(32))
    return node_loader(dataset, np.array_split(np.arange(32), n), 4)


def test_lightning_module_errors(tmp_path):
    with pytest.raises(ValueError, match="leave optimizer unset"):
        MosaicModule(Linear(), 2, optimizer=lambda p: torch.optim.SGD(p, lr=1))

    class Manual(Linear):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(ValueError, match="manual optimization"):
        MosaicModule(Manual(), 2)

    class ReturnsNone(Linear):
        def training_step(self, batch, batch_idx):
            return None

    with pytest.raises(ValueError, match="training_step must return the node's loss as a scalar tensor.*got None"):
        trainer(tmp_path, max_steps=1).fit(MosaicModule(ReturnsNone(), 2), linear_data())

    class PerSample(Linear):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return (self.layer(x).squeeze(-1) - y) ** 2

    with pytest.raises(ValueError, match=r"got a tensor of shape \(4,\)"):
        trainer(tmp_path, max_steps=1).fit(MosaicModule(PerSample(), 2), linear_data())

    class TwoGroups(Linear):
        def configure_optimizers(self):
            return torch.optim.SGD([{"params": [self.layer.weight]}, {"params": [self.layer.bias], "lr": 1.0}], lr=0.1)

    with pytest.raises(ValueError, match=r"parameter group 1 has other hyperparameters than group 0 \(lr=1.0 vs 0.1\)"):
        trainer(tmp_path, max_steps=1).fit(MosaicModule(TwoGroups(), 2), linear_data())

    plain = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8)), batch_size=2)  # B == n: not per node
    with pytest.raises(ValueError, match=r"one mini-batch per node.*collate_fn=NodeBatchCollate\(2\)"):
        trainer(tmp_path, max_steps=1).fit(MosaicModule(Linear(), 2), plain)


# -- what a user keeps on self, logs in steps and epochs -------------------------------------------------------------


class StepOutputs(Linear):
    """Lightning's documented pattern: collect step outputs on self, reduce them at the epoch's end."""

    def __init__(self) -> None:
        super().__init__()
        self.validation_step_outputs = []

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.validation_step_outputs.append((self.layer(x).squeeze(-1) - y).square())

    def on_validation_epoch_end(self):
        self.log("val_mse", torch.cat(self.validation_step_outputs).mean())
        self.validation_step_outputs.clear()


def test_attributes_kept_on_self_are_per_node(tmp_path):
    module = MosaicModule(StepOutputs, num_nodes=3, init="independent")
    test = TensorDataset(torch.randn(40, 4), torch.randn(40))
    (values,) = trainer(tmp_path).validate(module, DataLoader(test, batch_size=16), verbose=False)
    expected = []
    for node in range(3):
        alone = StepOutputs()
        alone.load_state_dict(module.node_state_dict(node))
        with torch.no_grad():
            expected.append(float((alone.layer(test.tensors[0]).squeeze(-1) - test.tensors[1]).square().mean()))
    assert values["val_mse"] == pytest.approx(np.mean(expected), rel=1e-5)
    assert values["val_mse/node_std"] == pytest.approx(np.std(expected), rel=1e-4)
    assert module.node_module.validation_step_outputs == []  # the template's own list is untouched


class Counting(Linear):
    def __init__(self) -> None:
        super().__init__()
        from torchmetrics.aggregation import SumMetric

        self.seen = SumMetric()
        self.node_value = 0.0

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.update(torch.ones(len(y)))
        self.log("train_seen", self.seen, on_epoch=True, on_step=False)
        self.log("train/loss", nn.functional.mse_loss(self.layer(x).squeeze(-1), y), on_step=True, on_epoch=True)
        return nn.functional.mse_loss(self.layer(x).squeeze(-1), y)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", nn.functional.mse_loss(self.layer(batch[0]).squeeze(-1), batch[1]))


def test_training_metrics_survive_a_validation_inside_the_epoch(tmp_path):
    """A Metric logged in training_step counts the whole epoch although a validation runs in the middle of it; the
    user's own train/loss (logged on step and epoch) replaces MosaicModule's."""
    module = MosaicModule(Counting(), num_nodes=2)
    t = trainer(tmp_path, max_epochs=1, val_check_interval=0.5)
    val = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8)), batch_size=8)
    t.fit(module, node_loader(TensorDataset(torch.randn(32, 4), torch.randn(32)), [range(16), range(16, 32)], 4), val)
    assert float(t.callback_metrics["train_seen"]) == 16  # 4 steps x B = 4 per node, per node
    assert float(t.callback_metrics["train_seen/node_std"]) == 0
    assert {"train/loss_step", "train/loss_epoch", "val_loss"} <= set(t.callback_metrics)


class Alternating(Linear):
    def training_step(self, batch, batch_idx):
        x, y = batch
        node = int(y[0] > 100)  # node 1's targets are shifted by 1000
        self.log("v", float((batch_idx + node) % 2), on_step=False, on_epoch=True)
        return nn.functional.mse_loss(self.layer(x).squeeze(-1), y)


def test_the_epoch_std_of_a_training_value_is_over_per_node_epoch_means(tmp_path):
    data = TensorDataset(torch.randn(32, 4), torch.cat([torch.zeros(16), torch.full((16,), 1000.0)]))
    module = MosaicModule(Alternating(), num_nodes=2)
    t = trainer(tmp_path, max_epochs=1)
    t.fit(module, node_loader(data, [range(16), range(16, 32)], 8, num_batches=2))
    # node 0 logs 0 then 1, node 1 logs 1 then 0: both epoch means are 0.5, so the std over nodes is 0
    assert float(t.callback_metrics["v"]) == pytest.approx(0.5)
    assert float(t.callback_metrics["v/node_std"]) == pytest.approx(0.0)


def test_unsupported_hooks_and_loaders_are_named(tmp_path):
    class WithHooks(Linear):
        def on_train_batch_start(self, batch, batch_idx):
            pass

        def on_after_backward(self):
            pass

    with pytest.warns(UserWarning, match="overrides on_train_batch_start, on_after_backward, which MosaicModule"):
        trainer(tmp_path, max_steps=1).fit(MosaicModule(WithHooks(), 2), linear_data())
    module = MosaicModule(Linear(), 2)
    with pytest.raises(ValueError, match="defines no test_step"):
        trainer(tmp_path).test(module, DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8)), batch_size=4))
    two = [DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8)), batch_size=4) for _ in range(2)]
    with pytest.raises(ValueError, match=r"one shared val set; got several val dataloaders \(dataloader_idx=1\)"):
        trainer(tmp_path).validate(MosaicModule(Counting(), 2), two)


def test_parameters_outside_the_users_optimizer_stay_fixed(tmp_path):
    """A linear probe: configure_optimizers holds only the head, so the (unfrozen) backbone must not move."""

    class Probe(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.head = nn.Linear(4, 8), nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.head(torch.relu(self.backbone(x))).squeeze(-1), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.head.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)

    probe = Probe()
    module = MosaicModule(probe, num_nodes=2)
    data = linear_data()
    trainer(tmp_path, max_steps=5, gradient_clip_val=0.05).fit(module, data)
    frozen = Probe()
    frozen.load_state_dict(probe.state_dict())
    frozen.backbone.requires_grad_(False)  # the same probe, the backbone frozen the other way
    reference = MosaicModule(frozen, num_nodes=2)
    trainer(tmp_path, max_steps=5, gradient_clip_val=0.05).fit(reference, data)
    for node in range(2):
        state, expected = module.node_state_dict(node), reference.node_state_dict(node)
        assert torch.equal(state["backbone.weight"], probe.backbone.weight.detach())
        assert not torch.equal(state["head.weight"], probe.head.weight.detach())
        # the clipped norm leaves the untrained backbone out, as when it is frozen
        torch.testing.assert_close(state["head.weight"], expected["head.weight"], rtol=1e-6, atol=1e-7)


def test_epoch_end_logs_attribute_changes_and_frozen_nodes(tmp_path):
    from lightning_mosaic import MosaicFaults

    class EpochEnd(Linear):
        def __init__(self) -> None:
            super().__init__()
            self.outputs, self.scale, self.steps = [], 1.0, 0

        def training_step(self, batch, batch_idx):
            self.outputs.append(batch[1].sum())
            self.steps += 1
            return nn.functional.mse_loss(self.layer(batch[0]).squeeze(-1) * self.scale, batch[1])

        def on_train_epoch_end(self):
            self.log("ysum", torch.stack(self.outputs).sum())  # Lightning's documented epoch-end pattern
            self.log("nouts", float(len(self.outputs)), on_epoch=True)
            self.outputs.clear()

        def test_step(self, batch, batch_idx):
            self.log("scale_used", self.scale)

    data = TensorDataset(torch.randn(32, 4), torch.cat([torch.zeros(16), torch.ones(16)]))
    module = MosaicModule(EpochEnd(), num_nodes=2)
    t = trainer(tmp_path, max_epochs=1)
    t.fit(module, node_loader(data, [range(16), range(16, 32)], 4, num_batches=4))
    metrics = t.callback_metrics
    assert float(metrics["ysum"]) == pytest.approx(8.0) and float(metrics["ysum/node_std"]) == pytest.approx(8.0)
    assert float(metrics["nouts"]) == 4 and float(metrics["nouts/node_std"]) == 0
    module.node_module.scale = 100.0  # set on the user's module between fit and test: every node sees it
    (tested,) = trainer(tmp_path).test(module, DataLoader(TensorDataset(torch.randn(4, 4), torch.randn(4))))
    assert tested["scale_used"] == 100.0
    # Stragglers skip their local step entirely: their step counter stays behind
    straggling = MosaicModule(EpochEnd(), num_nodes=2)
    faults = MosaicFaults(straggler_prob=0.5, seed=0)
    trainer(tmp_path, max_steps=8, callbacks=[faults, MosaicGossip(peers=1)]).fit(
        straggling, node_loader(data, [range(16), range(16, 32)], 4, num_batches=8)
    )
    skipped = [int(sum(bool(faults.faults.idle(step, step)[i]) for step in range(1, 9))) for i in range(2)]
    assert [state["steps"] for state in straggling._nodes._states[:2]] == [8 - k for k in skipped]
    assert any(skipped)
