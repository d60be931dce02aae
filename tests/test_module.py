"""MosaicModule + MosaicGossip in real Lightning Trainer runs on the bundled digits."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_mosaic import MosaicGossip, MosaicModule
from lightning_mosaic.callbacks import NonFiniteParametersError
from lightning_mosaic.data import DigitsDataModule
from lightning_mosaic.gossip import consensus_distance
from lightning_mosaic.models import MLP
from lightning_mosaic.recipes import RECIPES_DIR
from tests.helpers import quiet_trainer


def trainer(tmp_path, max_steps: int, callbacks=(), **kwargs) -> Trainer:
    options = dict(max_steps=max_steps, num_sanity_val_steps=0, default_root_dir=tmp_path, deterministic=True)
    return quiet_trainer(callbacks=list(callbacks), **{**options, **kwargs})


def digits(n: int = 8, **kwargs) -> DigitsDataModule:
    return DigitsDataModule(num_nodes=n, alpha=0.5, batch_size=8, **kwargs)


def test_gossip_runs_once_per_optimizer_step_with_accumulation(tmp_path):
    module = MosaicModule(MLP, 8)
    gossip = MosaicGossip(fragments=4, peers=2)
    t = trainer(tmp_path, 12, [gossip], accumulate_grad_batches=3, limit_val_batches=0)
    t.fit(module, digits())
    assert t.global_step == 12 and gossip.rounds == 12 and gossip.protocol.rounds == 12


def test_every_n_steps(tmp_path):
    gossip = MosaicGossip(fragments=2, peers=1, every_n_steps=4)
    t = trainer(tmp_path, 10, [gossip], limit_val_batches=0)
    t.fit(MosaicModule(MLP, 8), digits())
    assert gossip.rounds == 2  # after steps 4 and 8


def test_training_without_gossip_keeps_nodes_independent(tmp_path):
    """With no gossip each node trains only on its own shard: changing node 3's data changes only node 3."""
    results = []
    for perturb in (False, True):
        dm = digits(n=4)
        dm.setup("fit")
        if perturb:  # relabel node 3's shard
            tensors = dm.train_dataset.tensors
            idx = torch.as_tensor(dm.partition[3])
            tensors[1][idx] = (tensors[1][idx] + 1) % 10
        module = MosaicModule(MLP, 4, init="independent")
        trainer(tmp_path, 5, limit_val_batches=0).fit(module, dm)
        results.append(module.gossip_parameters.detach().clone())
    torch.testing.assert_close(results[0][:3], results[1][:3], rtol=0, atol=0)
    assert not torch.allclose(results[0][3], results[1][3])


def test_per_node_gradient_clipping():
    module = MosaicModule(MLP, 3)
    grad = torch.zeros_like(module.gossip_parameters)
    grad[0, :4] = torch.tensor([3.0, 4.0, 0.0, 0.0])  # norm 5
    grad[1, :2] = torch.tensor([0.3, 0.4])  # norm 0.5, under the threshold
    grad[2, 0] = -7.0
    module.gossip_parameters.grad = grad.clone()
    module.configure_gradient_clipping(None, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    norms = module.gossip_parameters.grad.norm(dim=1)
    torch.testing.assert_close(norms, torch.tensor([1.0, 0.5, 1.0]), rtol=1e-5, atol=1e-5)
    module.gossip_parameters.grad = grad.clone()
    module.configure_gradient_clipping(None, gradient_clip_val=2.0, gradient_clip_algorithm="value")
    assert module.gossip_parameters.grad.abs().max() == 2.0
    assert module.gossip_parameters.grad[1, 0] == pytest.approx(0.3)


def test_validation_metrics_are_logged(tmp_path):
    gossip = MosaicGossip(fragments=4, peers=3)
    logger = CSVLogger(tmp_path, name="m")
    t = trainer(
        tmp_path, 60, [gossip], logger=logger, val_check_interval=20, check_val_every_n_epoch=None, log_every_n_steps=5
    )
    module = MosaicModule(MLP, 8, optimizer=lambda p: torch.optim.SGD(p, lr=0.2))
    t.fit(module, digits())
    metrics = t.callback_metrics
    for name in ("val/node_acc_mean", "val/node_acc_std", "val/avg_model_acc", "val/loss", "gossip/consensus_distance"):
        assert name in metrics, name
    assert 0.0 <= metrics["val/node_acc_std"] <= metrics["val/node_acc_mean"] <= 1.0
    assert metrics["val/node_acc_mean"] > 0.3  # learning, not chance (0.1)
    torch.testing.assert_close(
        metrics["gossip/consensus_distance"], consensus_distance(module.gossip_parameters), rtol=1e-5, atol=1e-9
    )
    logged = logger.log_dir + "/metrics.csv"
    header = open(logged).readline()
    assert "gossip/values_sent_per_node" in header and "val/avg_model_acc" in header


def test_checkpoint_resume_continues_exactly(tmp_path):
    """Stop at an epoch boundary, resume with fit(ckpt_path=...): same parameters as the uninterrupted run."""
    steps_per_epoch = 6

    def run(max_steps, ckpt_path=None, checkpoint=False):
        gossip = MosaicGossip(fragments=4, peers=2, seed=1)
        dm = digits(steps_per_epoch=steps_per_epoch)
        callbacks = [gossip]
        if checkpoint:
            callbacks.append(ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=12))
        module = MosaicModule(MLP, 8, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
        t = trainer(tmp_path, max_steps, callbacks, limit_val_batches=0, enable_checkpointing=checkpoint)
        t.fit(module, dm, ckpt_path=ckpt_path)
        return module.gossip_parameters.detach().clone(), gossip

    full, _ = run(24)
    run(12, checkpoint=True)
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    gossip_state = ckpt["callbacks"][MosaicGossip(fragments=4, peers=2, seed=1).state_key]
    assert gossip_state["rounds"] == 12
    assert list(ckpt["state_dict"]) == ["replicas.flat"]  # each replica stored once, in the (n, d) buffer
    resumed, gossip = run(24, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert gossip.rounds == 24
    torch.testing.assert_close(resumed, full, rtol=0, atol=0)


def test_node_state_dict_exports_one_node(tmp_path):
    n = 16
    module = MosaicModule(MLP, n, init="independent")
    state = module.node_state_dict(2)
    model = MLP()
    model.load_state_dict(state)
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(model(x), module(x, shared_input=True)[2])
    with pytest.raises(IndexError, match="node"):
        module.node_state_dict(n)
    # a plain state_dict of about 1/n of the module's: copies, not views of the (n, d) buffer
    torch.save(state, tmp_path / "node.pt")
    torch.save(module.state_dict(), tmp_path / "all.pt")
    ratio = (tmp_path / "node.pt").stat().st_size / (tmp_path / "all.pt").stat().st_size
    assert 0.5 / n < ratio < 1.5 / n


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fragments": 0}, "fragments"),
        ({"peers": 0}, "peers"),
        ({"topology": "hypercube"}, "topology"),
        ({"peers": "every"}, "peers"),
        ({"degree": 0}, "degree"),
        ({"weights": "equal"}, "weights"),
        ({"topology": "file"}, "topology='file' needs graph=PATH"),
        ({"fragmentation": "blocks"}, "fragmentation"),
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"seed": -1}, "seed"),
        ({"fragments": 2.5}, "fragments"),
        ({"drop_prob": 1.5}, "drop_prob"),
        ({"on_nonfinite": "ignore"}, "on_nonfinite"),
    ],
)
def test_gossip_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MosaicGossip(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"peers": 8}, "peers"),
        ({"peers": 3, "topology": "el-oracle", "fragments": 1}, "n \\* s even"),
        ({"fragments": 10**6}, "fragments"),
        ({"fragments": 5, "fragmentation": "layer"}, "parameter tensors"),
    ],
)
def test_gossip_errors_against_the_module(tmp_path, kwargs, match):
    module = MosaicModule(MLP, 8 if "el-oracle" not in kwargs.values() else 7)
    t = trainer(tmp_path, 1, [MosaicGossip(**kwargs)])
    with pytest.raises(ValueError, match=match):
        t.fit(module, digits(n=module.num_nodes))


def test_gossip_needs_a_mosaic_module(tmp_path):
    class Plain(LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(64, 10)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0].flatten(2)).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(TypeError, match="MosaicModule"):
        trainer(tmp_path, 1, [MosaicGossip()]).fit(Plain(), digits())


def test_module_errors(tmp_path):
    with pytest.raises(ValueError, match="num_nodes"):
        MosaicModule(MLP, 1)
    with pytest.raises(ValueError, match="execution"):
        MosaicModule(MLP, 4, execution="jit")
    module = MosaicModule(MLP, 4)
    with pytest.raises(ValueError, match="num_nodes = 4"):
        module.training_step((torch.randn(3, 2, 1, 8, 8), torch.zeros(3, 2, dtype=torch.long)), 0)
    with pytest.raises(ValueError, match="LBFGS"):  # when the module is built, before any run
        MosaicModule(MLP, 4, optimizer=lambda p: torch.optim.LBFGS(p))
    with pytest.raises(ValueError, match="num_nodes=4 nodes but the MosaicModule has num_nodes=8"):
        trainer(tmp_path, 1).fit(MosaicModule(MLP, 8), digits(n=4))


def test_lr_scheduler_steps_per_optimizer_step(tmp_path):
    module = MosaicModule(
        MLP,
        4,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5),
    )
    t = trainer(tmp_path, 10, limit_val_batches=0)
    t.fit(module, digits(n=4))
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)


def test_scheduler_from_yaml(tmp_path):
    from lightning_mosaic.cli import MosaicCLI
    from lightning_mosaic.data.base import NodeDataModule

    cli = MosaicCLI(
        MosaicModule,
        NodeDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=[
            "--config",
            str(RECIPES_DIR / "quickstart.yaml"),
            "--model.init_args.lr_scheduler",
            "torch.optim.lr_scheduler.CosineAnnealingLR",
            "--model.init_args.lr_scheduler.init_args.T_max",
            "300",
        ],
    )
    config = cli.model.configure_optimizers()
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.CosineAnnealingLR)
    assert config["lr_scheduler"]["interval"] == "step"


class PoisonNode(Callback):
    """Writes NaN into one node's parameters after local training at a given step (before MosaicGossip runs)."""

    def __init__(self, node: int, step: int) -> None:
        self.node, self.step = node, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.gossip_parameters[self.node, :10] = float("nan")


def test_nonfinite_node_raises_before_anything_is_sent(tmp_path):
    module = MosaicModule(MLP, 8)
    gossip = MosaicGossip(fragments=4, peers=7)  # s = n - 1: any message would reach every node
    with pytest.raises(NonFiniteParametersError, match=r"nodes \[2\] .* before gossip round 3 \(global step 3\)"):
        trainer(tmp_path, 10, [PoisonNode(2, 3), gossip], limit_val_batches=0).fit(module, digits())
    params = module.gossip_parameters.detach()
    assert torch.isfinite(params[[0, 1, 3, 4, 5, 6, 7]]).all()
    assert gossip.rounds == 2


def test_nonfinite_node_can_be_isolated(tmp_path):
    module = MosaicModule(MLP, 8)
    gossip = MosaicGossip(fragments=4, peers=7, on_nonfinite="isolate")
    with pytest.warns(UserWarning, match=r"nodes \[5\] have NaN or Inf parameters"):
        trainer(tmp_path, 6, [PoisonNode(5, 2), gossip], limit_val_batches=0).fit(module, digits())
    params = module.gossip_parameters.detach()
    assert not torch.isfinite(params[5]).all()
    assert torch.isfinite(params[[0, 1, 2, 3, 4, 6, 7]]).all()
    assert gossip.rounds == 6


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    def fit(n, gossip, max_steps, ckpt_path=None):
        callbacks = [gossip, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)]
        t = trainer(tmp_path, max_steps, callbacks, limit_val_batches=0, enable_checkpointing=True)
        t.fit(MosaicModule(MLP, n), digits(n=n, steps_per_epoch=4), ckpt_path=ckpt_path)

    fit(8, MosaicGossip(fragments=4, peers=2, seed=1), 4)
    last = tmp_path / "ckpt" / "last.ckpt"
    with pytest.raises(ValueError, match="fragments=4 in the checkpoint, 8 here"):
        fit(8, MosaicGossip(fragments=8, peers=2, seed=1), 8, ckpt_path=last)
    with pytest.raises(ValueError, match=r"seed=1 in the checkpoint, 2 here"):
        fit(8, MosaicGossip(fragments=4, peers=2, seed=2), 8, ckpt_path=last)
    with pytest.raises(ValueError, match="n=8 nodes of d=4810 parameters, this MosaicModule has n=6 nodes"):
        fit(6, MosaicGossip(fragments=4, peers=2, seed=1), 8, ckpt_path=last)
    fit(8, MosaicGossip(fragments=4, peers=2, seed=1), 8, ckpt_path=last)  # the same configuration resumes


@pytest.mark.parametrize(
    ("stop", "saved_by", "accumulate"),
    [
        (9, "every_n_train_steps", 1),  # mid-epoch (epochs of 6 batches)
        (10, "every_n_train_steps", 1),
        (9, "max_steps", 1),  # fit stopped by max_steps mid-epoch: Lightning saves at its (cut short) epoch end
        (4, "every_n_train_steps", 2),  # 2 batches per optimizer step: step 4 is batch 2 of the second epoch
        (5, "every_n_train_steps", 4),  # epochs of 6 batches = steps of 4 + 2 batches: step 5 ends batch 4 of epoch 2
        (6, "every_n_epochs", 1),  # ModelCheckpoint's default: at the end of an epoch, the fit going on
        (12, "every_n_epochs", 1),
    ],
)
def test_mid_epoch_resume_is_bit_identical(tmp_path, stop, saved_by, accumulate):
    """Interrupted at step ``stop`` and resumed with fit(ckpt_path=...): same data order, parameters, gossip."""

    def run(max_steps, ckpt_path=None, save_at=None):
        seen = []

        class Record(Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                seen.append(batch[0].sum().item())

        callbacks = [MosaicGossip(fragments=4, peers=2, seed=3), Record()]
        if save_at:
            every = save_at if saved_by == "every_n_train_steps" else None
            epochs = 1 if saved_by == "every_n_epochs" else None
            callbacks.append(
                ModelCheckpoint(tmp_path / "mid", every_n_train_steps=every, every_n_epochs=epochs, save_top_k=-1)
            )
        module = MosaicModule(MLP, 8, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
        t = trainer(
            tmp_path,
            max_steps,
            callbacks,
            limit_val_batches=0,
            enable_checkpointing=bool(save_at),
            accumulate_grad_batches=accumulate,
        )
        t.fit(module, digits(steps_per_epoch=6), ckpt_path=ckpt_path)
        return seen, module.gossip_parameters.detach().clone()

    full_batches, full = run(20)
    run(20 if saved_by == "every_n_epochs" else stop, save_at=stop)
    (ckpt,) = (tmp_path / "mid").glob(f"*step={stop}.ckpt")
    resumed_batches, resumed = run(20, ckpt_path=ckpt)
    trained = len(full_batches) - len(resumed_batches)
    assert trained == {1: stop, 2: 2 * stop, 4: 16}[accumulate]
    assert resumed_batches == full_batches[trained:]  # the data order continues exactly
    torch.testing.assert_close(resumed, full, rtol=0, atol=0)


def bn_dropout_digits_cnn() -> nn.Module:
    """A user's CNN for the 8x8 digits with BatchNorm and Dropout (not one of the library's models)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(8 * 8 * 8, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_evaluation_of_batchnorm_dropout_model_is_deterministic_and_exported_nodes_match(tmp_path, execution):
    module = MosaicModule(bn_dropout_digits_cnn, 4, execution=execution, init="independent")
    data = digits(4)
    t = trainer(tmp_path, 6, [MosaicGossip(fragments=2, peers=1)], val_check_interval=3, limit_val_batches=2)
    t.fit(module, data)
    tracked = module.replicas.stacked_buffers()["1.num_batches_tracked"]
    assert tracked.tolist() == [6, 6, 6, 6]  # one per training step: validation in between counted nothing
    buffers = {k: v.clone() for k, v in module.replicas.stacked_buffers().items()}
    first = t.validate(module, data, verbose=False)[0]
    second = t.validate(module, data, verbose=False)[0]
    assert first == second  # no dropout, running statistics: the same weights give the same numbers
    for name, value in module.replicas.stacked_buffers().items():
        assert torch.equal(value, buffers[name]), name  # evaluation never changes a node's buffers
    # Each node exported with node_state_dict scores exactly what was evaluated: the mean of the exported
    # models' test losses and accuracies are the logged node means; the averaged model's accuracy likewise.
    losses, accuracies = [], []
    eval_x = torch.cat([b[0] for b in data.val_dataloader()])
    eval_y = torch.cat([b[1] for b in data.val_dataloader()])
    for node in range(4):
        model = bn_dropout_digits_cnn()
        model.load_state_dict(module.node_state_dict(node))
        with torch.no_grad():
            out = model.eval()(eval_x)
        losses.append(nn.functional.cross_entropy(out, eval_y))
        accuracies.append((out.argmax(1) == eval_y).float().mean())
    assert first["val/loss"] == pytest.approx(float(torch.stack(losses).mean()), rel=1e-5)
    assert first["val/node_acc_mean"] == pytest.approx(float(torch.stack(accuracies).mean()), abs=1e-6)
    averaged = bn_dropout_digits_cnn()
    averaged.load_state_dict(module.replicas.average_state())
    with torch.no_grad():
        avg_acc = (averaged.eval()(eval_x).argmax(1) == eval_y).float().mean()
    assert first["val/avg_model_acc"] == pytest.approx(float(avg_acc), abs=1e-6)


# -- any model: several inputs, tuple outputs, per-token targets, any loss, torchmetrics ----------------------------


def digits_tensors(split: str = "train"):
    """The real sklearn digits as (images (N, 8, 8), labels (N,)), a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    digits_ = load_digits()
    images = torch.tensor(digits_.images / 16.0, dtype=torch.float32)
    labels = torch.tensor(digits_.target)
    cut = int(0.8 * len(labels))
    return (images[:cut], labels[:cut]) if split == "train" else (images[cut:], labels[cut:])


def node_loaders(dataset_train, dataset_test, n: int, batch_size: int = 8):
    from torch.utils.data import DataLoader

    from lightning_mosaic.data import NodeBatchCollate, NodeBatchSampler

    labels = dataset_train.tensors[-1].numpy()
    from lightning_mosaic.data import dirichlet_partition

    partition = dirichlet_partition(labels if labels.ndim == 1 else labels[:, 0], n, 0.5, seed=0)
    train = DataLoader(
        dataset_train, batch_sampler=NodeBatchSampler(partition, batch_size), collate_fn=NodeBatchCollate(n)
    )
    return train, DataLoader(dataset_test, batch_size=64)


class TwoHalves(nn.Module):
    """Two inputs (top and bottom halves of a digit), a tuple output (logits, auxiliary logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.top, self.bottom = nn.Linear(32, 16), nn.Linear(32, 16)
        self.head, self.aux = nn.Linear(32, 10), nn.Linear(16, 10)

    def forward(self, top, bottom):
        a, b = torch.relu(self.top(top.flatten(1))), torch.relu(self.bottom(bottom.flatten(1)))
        return self.head(torch.cat([a, b], dim=1)), self.aux(a)


def tuple_loss(output, target):
    logits, aux = output
    return nn.functional.cross_entropy(logits, target) + 0.5 * nn.functional.cross_entropy(aux, target)


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_two_inputs_tuple_output_own_loss_and_torchmetrics(tmp_path, execution):
    from torch.utils.data import TensorDataset
    from torchmetrics.classification import MulticlassAccuracy

    (xtr, ytr), (xte, yte) = digits_tensors("train"), digits_tensors("test")
    train = TensorDataset(xtr[:, :4], xtr[:, 4:], ytr)
    test = TensorDataset(xte[:, :4], xte[:, 4:], yte)
    train_loader, test_loader = node_loaders(train, test, 4)

    class Head(MulticlassAccuracy):  # a metric of the first output only
        def update(self, output, target):
            super().update(output[0], target)

    module = MosaicModule(
        TwoHalves, 4, execution=execution, loss=tuple_loss, metrics={"acc": Head(num_classes=10, average="micro")}
    )
    t = trainer(tmp_path, 30, [MosaicGossip(fragments=2, peers=1)], limit_val_batches=0)
    t.fit(module, train_loader)
    (values,) = trainer(tmp_path, 1).validate(module, test_loader, verbose=False)
    assert {"val/loss", "val/node_acc_mean", "val/node_acc_std", "val/avg_model_acc"} <= set(values)
    losses, accuracies = [], []
    for node in range(4):
        model = TwoHalves()
        model.load_state_dict(module.node_state_dict(node))
        with torch.no_grad():
            out = model.eval()(xte[:, :4], xte[:, 4:])
        losses.append(float(tuple_loss(out, yte)))
        accuracies.append(float((out[0].argmax(1) == yte).float().mean()))
    assert values["val/node_acc_mean"] == pytest.approx(sum(accuracies) / 4, abs=1e-6)
    # the loss is averaged per batch (weighted by its size), so it equals the whole-set loss only up to that
    assert values["val/loss"] == pytest.approx(sum(losses) / 4, rel=0.05)
    assert values["val/node_acc_mean"] > 0.2  # above chance (0.1) after 30 steps on the real digits


class RowTagger(nn.Module):
    """A sequence model: every one of a digit's 8 rows (a token of 8 pixels) is tagged with the digit's class."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, 16, batch_first=True)
        self.out = nn.Linear(16, 10)

    def forward(self, rows):
        hidden, _ = self.rnn(rows)
        return self.out(hidden)  # (B, T, C)


def test_per_token_targets_with_the_default_loss_and_accuracy(tmp_path):
    from torch.utils.data import TensorDataset

    (xtr, ytr), (xte, yte) = digits_tensors("train"), digits_tensors("test")
    tags_tr, tags_te = ytr.unsqueeze(1).expand(-1, 8).contiguous(), yte.unsqueeze(1).expand(-1, 8).contiguous()
    train_loader, test_loader = node_loaders(TensorDataset(xtr, tags_tr), TensorDataset(xte, tags_te), 4)
    module = MosaicModule(RowTagger, 4, execution="loop")
    t = trainer(tmp_path, 20, [MosaicGossip(fragments=2, peers=1)], limit_val_batches=0)
    t.fit(module, train_loader)
    (values,) = trainer(tmp_path, 1).validate(module, test_loader, verbose=False)
    model = RowTagger()
    model.load_state_dict(module.node_state_dict(1))
    with torch.no_grad():
        correct = (model.eval()(xte).argmax(-1) == tags_te).float().mean()
    per_node = [None] * 4
    for node in range(4):
        model.load_state_dict(module.node_state_dict(node))
        with torch.no_grad():
            per_node[node] = float((model.eval()(xte).argmax(-1) == tags_te).float().mean())
    assert values["val/node_acc_mean"] == pytest.approx(sum(per_node) / 4, abs=1e-6)
    assert 0 <= float(correct) <= 1


def test_regression_with_own_loss_and_torchmetrics(tmp_path):
    """Regression: predict the digit's mean brightness of its bottom half from its top half (real digits)."""
    from torch.utils.data import TensorDataset
    from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError

    (xtr, _), (xte, _) = digits_tensors("train"), digits_tensors("test")
    ytr, yte = xtr[:, 4:].mean(dim=(1, 2)), xte[:, 4:].mean(dim=(1, 2))
    train = TensorDataset(xtr[:, :4].flatten(1), ytr)
    test = TensorDataset(xte[:, :4].flatten(1), yte)
    from torch.utils.data import DataLoader

    from lightning_mosaic.data import NodeBatchCollate, NodeBatchSampler

    partition = [list(range(i, len(train), 4)) for i in range(4)]
    loader = DataLoader(train, batch_sampler=NodeBatchSampler(partition, 8), collate_fn=NodeBatchCollate(4))

    def regressor() -> nn.Module:
        return nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 1), nn.Flatten(0))

    module = MosaicModule(
        regressor, 4, loss=nn.MSELoss(), metrics={"mse": MeanSquaredError(), "mae": MeanAbsoluteError()}
    )
    t = trainer(tmp_path, 40, [MosaicGossip(fragments=2, peers=1)], limit_val_batches=0)
    t.fit(module, loader)
    (values,) = trainer(tmp_path, 1).validate(module, DataLoader(test, batch_size=500), verbose=False)
    assert "val/node_acc_mean" not in values  # no accuracy for a regression
    mse = []
    for node in range(4):
        model = regressor()
        model.load_state_dict(module.node_state_dict(node))
        with torch.no_grad():
            mse.append(float(nn.functional.mse_loss(model(xte[:, :4].flatten(1)), yte)))
    assert values["val/node_mse_mean"] == pytest.approx(sum(mse) / 4, rel=1e-5)
    assert values["val/loss"] == pytest.approx(sum(mse) / 4, rel=1e-5)  # one batch: the loss is the MSE
    assert values["val/node_mse_std"] == pytest.approx(float(torch.tensor(mse).std(correction=0)), rel=1e-4)
    averaged = regressor()
    averaged.load_state_dict(module.replicas.average_state())
    with torch.no_grad():
        avg_mse = float(nn.functional.mse_loss(averaged(xte[:, :4].flatten(1)), yte))
    assert values["val/avg_model_mse"] == pytest.approx(avg_mse, rel=1e-5)
    assert {"val/node_mae_mean", "val/node_mae_std", "val/avg_model_mae"} <= set(values)


def test_bad_models_and_batches_are_named(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    mixed = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2).double())
    with pytest.raises(ValueError, match=r"several dtypes \(0.weight is torch.float32, 1.weight is torch.float64\)"):
        MosaicModule(mixed, 2)
    # the default loss cannot take a tuple output
    (xtr, ytr) = digits_tensors("train")
    train_loader, _ = node_loaders(TensorDataset(xtr[:, :4], xtr[:, 4:], ytr), TensorDataset(xtr, ytr), 2)
    with pytest.raises(ValueError, match=r"default loss \(cross-entropy\).*got outputs tuple.*pass loss="):
        trainer(tmp_path, 1).fit(MosaicModule(TwoHalves, 2), train_loader)
    with pytest.raises(ValueError, match=r"loss .* must return one scalar per node's batch"):
        per_sample = nn.CrossEntropyLoss(reduction="none")
        trainer(tmp_path, 1).fit(MosaicModule(TwoHalves, 2, loss=lambda o, y: per_sample(o[0], y)), train_loader)
    # a plain (B, ...) loader with B == n slips past no check
    plain = DataLoader(TensorDataset(xtr.unsqueeze(1), ytr), batch_size=2)
    with pytest.raises(ValueError, match=r"plain batches of batch_size=2 samples, not one mini-batch per node"):
        trainer(tmp_path, 1).fit(MosaicModule(MLP, 2), plain)
    # a loader of other shapes that has no batch size gets the shape check
    unbatched = DataLoader(TensorDataset(xtr.unsqueeze(1), ytr), batch_size=None)
    with pytest.raises(ValueError, match=r"one mini-batch per node, every tensor shaped \(n, B, \.\.\.\)"):
        trainer(tmp_path, 1).fit(MosaicModule(MLP, 2), unbatched)


# -- models and losses users bring ---------------------------------------------------------------------------------


class TiedLanguageModel(nn.Module):
    """Weight tying: the decoder is the embedding (one Parameter under two names)."""

    def __init__(self, vocabulary: int = 11) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, 6)
        self.decode = nn.Linear(6, vocabulary, bias=False)
        self.decode.weight = self.embed.weight

    def forward(self, tokens):
        return self.decode(torch.tanh(self.embed(tokens)))


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_tied_weights_train_as_one_tensor_and_export(execution):
    module = MosaicModule(TiedLanguageModel, 2, execution=execution, init="independent")
    assert module.replicas.sizes == [66]  # the tied matrix is stored once
    tokens = torch.randint(0, 11, (2, 3, 5))
    module.node_losses(module(tokens), tokens).sum().backward()
    assert module.gossip_parameters.grad.abs().sum() > 0
    model = TiedLanguageModel()
    model.load_state_dict(module.node_state_dict(1))  # both names present
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(module(tokens[1:2].squeeze(0), shared_input=True)[1], model(tokens[1]))


def test_recurrent_models_run_as_a_loop_and_auto_falls_back_from_vmap(tmp_path):
    from lightning_mosaic.replicas import default_execution

    assert default_execution(torch.device("cuda"), RowTagger()) == "loop"  # nn.GRU has no vmap batching rule

    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(8, 10)

        def forward(self, x):
            x = x.flatten(1)
            return self.layer(x if x.sum() > 0 else -x)  # data-dependent control flow: no vmap

    x = torch.rand(2, 3, 8)
    module = MosaicModule(DataDependent, 2)
    with pytest.warns(UserWarning, match="cannot run under torch.func.vmap.*runs it per node"):
        out = module(x)
    assert out.shape == (2, 3, 10) and module.resolved_execution() == "loop"
    with pytest.raises(ValueError, match=r"cannot run under torch.func.vmap .*use execution='loop'"):
        MosaicModule(DataDependent, 2, execution="vmap")(x)


def test_padding_targets_are_left_out_of_the_default_loss_and_accuracy():
    module = MosaicModule(RowTagger, 2)
    rows = torch.rand(2, 4, 8, 8)
    tags = torch.randint(0, 10, (2, 4, 8))
    padded = tags.clone()
    padded[:, :, 4:] = -100
    outputs = module(rows)
    expected = [nn.functional.cross_entropy(outputs[i].flatten(0, 1), padded[i].flatten()) for i in range(2)]
    torch.testing.assert_close(module.node_losses(outputs, padded), torch.stack(expected))
    metrics = nn.ModuleDict(module.configure_eval_metrics())
    module.update_eval_metrics(metrics, outputs, None, padded[0])
    correct = (outputs.argmax(-1)[:, :, :4] == tags[0, :, :4]).float().flatten(1).mean(1)
    torch.testing.assert_close(metrics["node_acc"].compute().float(), correct)


def test_losses_metrics_and_inits_that_cannot_work_are_refused():
    from torchmetrics.classification import MulticlassAccuracy

    class Weighted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.log_var = nn.Parameter(torch.zeros(()))

        def forward(self, output, target):
            return nn.functional.cross_entropy(output, target) * self.log_var.exp()

    with pytest.raises(ValueError, match="loss Weighted has parameters"):
        MosaicModule(MLP, 2, loss=Weighted())
    with pytest.raises(ValueError, match=r"init='independent' .* got an instance of MLP .* model=MLP"):
        MosaicModule(MLP(), 2, init="independent")
    module = MosaicModule(lambda: nn.Linear(3, 1), 2)
    with pytest.raises(ValueError, match="takes class indices .* got torch.float32 targets; for regression"):
        module.node_losses(torch.randn(2, 4, 1), torch.randn(2, 4))
    per_class = MosaicModule(MLP, 2, metrics={"pc": MulticlassAccuracy(10, average=None)})
    metrics = nn.ModuleDict(per_class.configure_eval_metrics())
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
    per_class.update_eval_metrics(metrics, per_class(x, shared_input=True), None, y)
    with pytest.raises(ValueError, match=r"metrics\['pc'\] computed a tensor of shape \(10,\)"):
        per_class.compute_eval_metrics(metrics, "val")


def test_predict_gives_every_node_and_the_averaged_model(tmp_path):
    from torch.utils.data import DataLoader

    module = MosaicModule(MLP, 3, init="independent")
    images = torch.rand(10, 1, 8, 8)
    (predictions,) = trainer(tmp_path, 1).predict(module, DataLoader(images, batch_size=10))
    assert predictions["nodes"].shape == (3, 10, 10) and predictions["avg_model"].shape == (10, 10)
    model = MLP()
    model.load_state_dict(module.node_state_dict(2))
    torch.testing.assert_close(predictions["nodes"][2], model.eval()(images), rtol=1e-5, atol=1e-6)


def test_frozen_nodes_keep_their_batchnorm_statistics(tmp_path):
    from lightning_mosaic import MosaicFaults

    class Watch(Callback):
        def __init__(self) -> None:
            self.before, self.frozen, self.after = [], [], []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.before.append(pl_module.replicas.stacked_buffers()["2.running_mean"].clone())

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.frozen.append(pl_module.frozen_nodes.clone())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.after.append(pl_module.replicas.stacked_buffers()["2.running_mean"].clone())

    def model() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))

    watch = Watch()
    faults = MosaicFaults(straggler_prob=0.4, seed=0)
    t = trainer(tmp_path, 6, [faults, MosaicGossip(peers=1), watch], limit_val_batches=0)  # buffers are not gossiped
    t.fit(MosaicModule(model, 4), digits(4))
    for before, frozen, after in zip(watch.before, watch.frozen, watch.after, strict=True):
        changed = (before != after).any(dim=1)
        assert torch.equal(changed, ~frozen)  # exactly the nodes that trained updated their statistics
    assert any(f.any() for f in watch.frozen)
