"""Backward per node / per chunk of nodes (``MosaicModule(backward_chunk=...)``) against the joint backward of the
summed loss (``backward_chunk="all"``): the same gradients after every step, bit for bit on the loop path, to float
rounding on the vmap path; and the chunks really run one after the other."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins import MixedPrecision
from torch import nn

from lightning_mosaic import MosaicGossip, MosaicModule
from lightning_mosaic.callbacks import MosaicFaults
from lightning_mosaic.data import DigitsDataModule
from lightning_mosaic.models import MLP
from tests.helpers import quiet_trainer

N = 5  # a chunk of 2 does not divide it


class BNDropoutCNN(nn.Module):
    """Convolution, BatchNorm (per-node running statistics) and Dropout (random masks) on 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3), nn.Flatten(), nn.Linear(4 * 36, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Classifier(LightningModule):
    """A user's LightningModule with BatchNorm and Dropout; its own optimizer records the clipped gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 10)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return RecordingSGD(self.parameters(), lr=0.1, momentum=0.9)


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of every gradient it steps with (after Lightning's clipping)."""

    def __init__(self, params, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.seen: list[torch.Tensor] = []

    def step(self, closure=None):
        loss = super().step(closure)  # the closure (training_step, backward, clipping) runs inside
        self.seen.append(self.param_groups[0]["params"][0].grad.clone())
        return loss


class Losses(Callback):
    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []
        self.backward_hooks = 0

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.backward_hooks += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(outputs["loss"].detach().clone())


def fit(model, chunk, steps: int = 3, faults: bool = True, execution: str = "auto", **trainer_options):
    """Train ``steps`` optimizer steps of N digits nodes; returns (gradients per step, losses per batch, rows, the
    callback counting hooks)."""
    torch.manual_seed(0)
    wrapped = isinstance(model, type) and issubclass(model, LightningModule)
    options = {} if wrapped else {"optimizer": lambda p: RecordingSGD(p, lr=0.1, momentum=0.9)}
    module = MosaicModule(model, N, backward_chunk=chunk, execution=execution, seed=0, **options)
    losses = Losses()
    callbacks = [MosaicGossip(fragments=2, peers=2, seed=0), losses]
    if faults:  # stragglers and churn: frozen nodes skip local steps
        callbacks.insert(0, MosaicFaults(availability=0.7, straggler_prob=0.3, seed=1))
    trainer = quiet_trainer(max_steps=steps, limit_val_batches=0, callbacks=callbacks, **trainer_options)
    trainer.fit(module, DigitsDataModule(num_nodes=N, alpha=0.5, batch_size=8, seed=0))
    (optimizer,) = trainer.optimizers
    return optimizer.seen, losses.values, module.gossip_parameters.detach().clone(), losses


def assert_same_run(reference, other, exact: bool = True) -> None:
    (grads, losses, rows, _), (grads2, losses2, rows2, _) = reference, other
    assert len(grads) == len(grads2) > 0 and len(losses) == len(losses2)
    compare = torch.equal if exact else (lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-6))
    for step, (a, b) in enumerate(zip(grads, grads2)):
        assert a.abs().sum() > 0
        assert compare(a, b), f"step {step}: max difference {(a - b).abs().max()}"
    assert all(compare(a, b) for a, b in zip(losses, losses2))
    assert compare(rows, rows2)


CLIPPED_AND_ACCUMULATED = {"accumulate_grad_batches": 2, "gradient_clip_val": 0.05}


@pytest.mark.parametrize("model", [BNDropoutCNN, MLP])
def test_loop_path_per_node_and_per_chunk_gradients_equal_the_joint_backward_bit_for_bit(model):
    joint = fit(model, "all", execution="loop", **CLIPPED_AND_ACCUMULATED)
    for chunk in ("auto", 2):  # auto on the loop path: one node at a time
        assert_same_run(joint, fit(model, chunk, execution="loop", **CLIPPED_AND_ACCUMULATED))
    assert joint[3].backward_hooks == 6  # one on_before_backward per batch, with either backward


def test_wrapped_lightning_module_per_node_backward_equals_the_joint_backward_bit_for_bit():
    joint = fit(Classifier, "all", **CLIPPED_AND_ACCUMULATED)
    per_node = fit(Classifier, "auto", **CLIPPED_AND_ACCUMULATED)
    assert_same_run(joint, per_node)
    assert per_node[3].backward_hooks == 6


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_per_node_backward_equals_the_joint_backward_bit_for_bit(precision):
    """bf16-mixed (autocast, no scaling) and 16-mixed with its GradScaler (on CPU through the plugin: Lightning's
    precision="16-mixed" switches to bf16 on CPU); the scaled backward of the first step overflows and the scaler
    skips that step alike."""

    def options():  # a fresh plugin per run: the GradScaler's scale is state
        return {"precision": "bf16-mixed"} if precision == "bf16" else {"plugins": [MixedPrecision("16-mixed", "cpu")]}

    joint = fit(BNDropoutCNN, "all", steps=4, faults=False, gradient_clip_val=0.05, **options())
    assert len(joint[0]) == (4 if precision == "bf16" else 3)  # fp16: the first step overflowed and was skipped
    assert_same_run(joint, fit(BNDropoutCNN, "auto", steps=4, faults=False, gradient_clip_val=0.05, **options()))


def test_vmap_chunks_equal_the_joint_vmap_backward_to_float_rounding():
    joint = fit(MLP, "all", execution="vmap", **CLIPPED_AND_ACCUMULATED)
    for chunk in (1, 2, 3, "auto"):
        assert_same_run(joint, fit(MLP, chunk, execution="vmap", **CLIPPED_AND_ACCUMULATED), exact=False)


class _Mark(torch.autograd.Function):
    """Identity that records "F" when its forward runs and "B" when its backward does."""

    events: list[str] = []
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        _Mark.events.append("F")
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad):
        _Mark.events.append("B")
        return grad


class Marked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Mark.apply(self.fc(x.flatten(1)))


def _most_forwards_alive(chunk, execution: str) -> int:
    _Mark.events.clear()
    fit(Marked, chunk, steps=1, faults=False, execution=execution)
    text = "".join(_Mark.events)
    return max(len(run) for run in text.split("B") if run) if "B" in text else len(text)


@pytest.mark.parametrize("execution", ["loop", "vmap"])
def test_only_one_chunk_of_nodes_is_alive_before_its_backward(execution):
    """The graph of every node is built before any backward with "all"; with chunks, each chunk's backward runs
    before the next chunk's forward (so only one chunk's activations are alive)."""
    per_vmap_call = 1 if execution == "vmap" else None  # a vmapped chunk runs the marked forward once
    assert _most_forwards_alive("all", execution) == (per_vmap_call or N)
    assert _most_forwards_alive(2, execution) == (per_vmap_call or 2)
    assert _most_forwards_alive("auto", execution) == 1
    if execution == "vmap":  # the vmapped forward ran once per chunk: 3 chunks of 2, 2, 1 nodes
        _Mark.events.clear()
        fit(Marked, 2, steps=1, faults=False, execution=execution)
        assert _Mark.events == ["F", "B"] * 3


def test_auto_chunk_on_the_vmap_path_follows_the_activation_budget():
    for budget, expected in ((1, 1), (10**12, N)):
        module = MosaicModule(MLP, N, execution="vmap", activation_budget=budget)
        assert module.resolved_backward_chunk is None  # measured on the first step
        Trainer(
            max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0,
        ).fit(module, DigitsDataModule(num_nodes=N, alpha=0.5, batch_size=8, seed=0))  # fmt: skip
        assert module.resolved_backward_chunk == expected
    assert MosaicModule(MLP, N, execution="loop").resolved_backward_chunk == 1
    assert MosaicModule(MLP, N, backward_chunk=3).resolved_backward_chunk == 3
    assert MosaicModule(MLP, N, backward_chunk="all").resolved_backward_chunk is None


def test_without_a_trainer_the_training_step_returns_the_loss_with_its_graph():
    module = MosaicModule(MLP, 3)
    loss = module.training_step((torch.randn(3, 2, 1, 8, 8), torch.zeros(3, 2, dtype=torch.long)), 0)
    assert loss.requires_grad
    loss.backward()
    assert module.gossip_parameters.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backward_chunk": 0}, r"backward_chunk must be an integer >= 1 or 'auto' or 'all', got 0"),
        ({"backward_chunk": "some"}, r"backward_chunk must be an integer >= 1 or 'auto' or 'all', got 'some' \(str\)"),
        ({"backward_chunk": True}, r"backward_chunk must be .* got True \(bool\)"),
        ({"activation_budget": 0}, r"activation_budget must be an integer >= 1 \(bytes\) or None, got 0"),
    ],
)
def test_bad_backward_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MosaicModule(MLP, 4, **kwargs)


def test_auto_chunk_off_cuda_holds_at_most_chunk_gradient_bytes_of_gradient(monkeypatch):
    """Off CUDA a vmap chunk's fresh gradient tensors stay small enough for the allocator to reuse its memory."""
    import lightning_mosaic.module as module_file

    d = MosaicModule(MLP, N).replicas.num_coordinates
    monkeypatch.setattr(module_file, "CHUNK_GRADIENT_BYTES", 2 * 4 * d + 1)  # two nodes' float32 gradient
    module = MosaicModule(MLP, N, execution="vmap", activation_budget=10**12)  # the budget alone: all N
    quiet_trainer(max_steps=1, limit_val_batches=0).fit(module, DigitsDataModule(num_nodes=N, alpha=0.5, batch_size=8))
    assert module.resolved_backward_chunk == 2


class GradientTensors(Callback):
    """The gradient tensor the optimizer steps with, and a copy of its values, at every step."""

    def __init__(self) -> None:
        self.tensors: list[torch.Tensor] = []  # held: a freed tensor's address could be reused by the next one
        self.values: list[torch.Tensor] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grad = pl_module.gossip_parameters.grad
        self.tensors.append(grad)
        self.values.append(grad.clone())


@pytest.mark.parametrize("execution", ["loop", "vmap"])
def test_the_gradient_tensor_is_overwritten_from_step_to_step_with_the_joint_backwards_values(execution):
    """No fresh (m, d) gradient per step (its first write page-faults): the previous step's tensor is overwritten,
    with the values of the joint backward, which makes a new one every step."""
    runs = {}
    for chunk in ("all", "auto"):
        torch.manual_seed(0)
        module = MosaicModule(MLP, N, backward_chunk=chunk, execution=execution, seed=0)
        seen = GradientTensors()
        trainer = quiet_trainer(max_steps=4, limit_val_batches=0, callbacks=[seen], accumulate_grad_batches=2)
        trainer.fit(module, DigitsDataModule(num_nodes=N, alpha=0.5, batch_size=8, seed=0))
        runs[chunk] = seen
    first, *later = runs["auto"].tensors
    assert len(later) == 3 and all(t is first for t in later)
    compare = torch.equal if execution == "loop" else (lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-6))
    for joint, chunked in zip(runs["all"].values, runs["auto"].values, strict=True):
        assert joint.abs().sum() > 0 and compare(joint, chunked)
    assert not torch.equal(runs["auto"].values[0], runs["auto"].values[1])
