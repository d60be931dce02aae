"""ReplicaStack: the (n, d) parameter buffer and the two execution paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_mosaic.models import MLP, GNLeNet
from lightning_mosaic.replicas import ReplicaStack, default_execution


def small_gnlenet() -> nn.Module:
    return GNLeNet(num_classes=10, in_channels=3, image_size=8)


def batch(n: int, b: int, shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, b, *shape, generator=g), torch.randint(0, 10, (n, b), generator=g)


def grads(stack: ReplicaStack, x: torch.Tensor, y: torch.Tensor, execution: str) -> tuple[torch.Tensor, torch.Tensor]:
    stack.flat.grad = None
    out = stack(x, execution=execution)
    loss = nn.functional.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1).sum()
    loss.backward()
    return out.detach(), stack.flat.grad.clone()


def test_buffer_layout_and_views():
    stack = ReplicaStack(MLP, 5)
    d = sum(p.numel() for p in MLP().parameters())
    assert stack.flat.shape == (5, d) and stack.flat.is_contiguous()
    assert [p is stack.flat for p in stack.parameters()] == [True]  # the buffer is the only parameter
    views = stack.stacked_parameters()
    base = stack.flat.untyped_storage().data_ptr()
    assert all(v.untyped_storage().data_ptr() == base for v in views.values())  # views, not copies
    assert views["net.1.weight"].shape == (5, 64, 64)


def test_same_and_independent_init():
    same = ReplicaStack(MLP, 4, seed=3)
    assert torch.equal(same.flat, same.flat[:1].expand(4, -1))
    assert torch.equal(same.flat, ReplicaStack(MLP, 4, seed=3).flat)  # seeded
    assert not torch.equal(same.flat, ReplicaStack(MLP, 4, seed=4).flat)
    indep = ReplicaStack(MLP, 4, init="independent", seed=3)
    assert not torch.equal(indep.flat[0], indep.flat[1])
    assert torch.equal(indep.flat, ReplicaStack(MLP, 4, init="independent", seed=3).flat)
    template = MLP()
    copied = ReplicaStack(template, 3)  # an instance: its weights are copied to every node
    assert torch.equal(copied.flat[2], torch.cat([p.detach().flatten() for p in template.parameters()]))


@pytest.mark.parametrize(("factory", "shape"), [(MLP, (1, 8, 8)), (small_gnlenet, (3, 8, 8))])
def test_vmap_and_loop_agree(factory, shape):
    stack = ReplicaStack(factory, 6, init="independent")
    x, y = batch(6, 5, shape)
    out_v, grad_v = grads(stack, x, y, "vmap")
    out_l, grad_l = grads(stack, x, y, "loop")
    torch.testing.assert_close(out_v, out_l, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_v, grad_l, rtol=1e-4, atol=1e-5)
    shared_v = stack(x[0], execution="vmap", shared_input=True)
    shared_l = stack(x[0], execution="loop", shared_input=True)
    torch.testing.assert_close(shared_v, shared_l, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_node_gradient_depends_only_on_its_own_data(execution):
    stack = ReplicaStack(small_gnlenet, 4, init="independent")
    x, y = batch(4, 3, (3, 8, 8))
    _, grad = grads(stack, x, y, execution)
    x2, y2 = x.clone(), y.clone()
    x2[2] = torch.randn_like(x2[2])
    y2[2] = (y2[2] + 1) % 10
    _, grad2 = grads(stack, x2, y2, execution)
    keep = [0, 1, 3]
    torch.testing.assert_close(grad2[keep], grad[keep], rtol=0, atol=0)
    assert not torch.allclose(grad2[2], grad[2])
    # and node i's gradient is that of its own model on its own batch, not divided by n
    model = small_gnlenet()
    model.load_state_dict(stack.node_state(1))
    nn.functional.cross_entropy(model(x[1]), y[1]).backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(grad[1], expected, rtol=1e-4, atol=1e-6)


def test_average_model_and_node_state():
    stack = ReplicaStack(MLP, 3, init="independent")
    x = torch.randn(7, 1, 8, 8)
    model = MLP()
    offset = 0
    mean = stack.flat.detach().mean(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(mean[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
    torch.testing.assert_close(stack.forward_average(x), model(x))
    model.load_state_dict(stack.node_state(2))
    torch.testing.assert_close(stack(x, execution="loop", shared_input=True)[2], model(x))


def test_buffers_are_stacked_per_node():
    stack = ReplicaStack(lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), 3)
    assert stack.stacked_buffers()["1.running_mean"].shape == (3, 4)
    x = torch.randn(3, 8, 4)
    out_v = stack(x, execution="vmap")
    assert out_v.shape == (3, 8, 4)
    assert not torch.equal(stack.stacked_buffers()["1.running_mean"][0], stack.stacked_buffers()["1.running_mean"][1])


def test_errors():
    with pytest.raises(ValueError, match="num_nodes"):
        ReplicaStack(MLP, 0)
    with pytest.raises(ValueError, match="init"):
        ReplicaStack(MLP, 2, init="random")
    with pytest.raises(TypeError, match="model"):
        ReplicaStack(42, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no trainable parameters"):
        ReplicaStack(nn.ReLU, 2)
    stack = ReplicaStack(MLP, 3)
    with pytest.raises(ValueError, match=r"\(n, B, \.\.\.\) with n = num_nodes = 3"):
        stack(torch.randn(2, 4, 64))


def test_default_execution_per_device_and_model():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_execution(cpu, GNLeNet()) == "loop"
    assert default_execution(cpu, MLP()) == "vmap"
    assert default_execution(cuda, GNLeNet()) == "vmap"


def bn_dropout_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


def bn_dropout_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout2d(0.3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )


@pytest.mark.parametrize("execution", ["vmap", "loop"])
@pytest.mark.parametrize(("factory", "shape"), [(bn_dropout_mlp, (8,)), (bn_dropout_cnn, (3, 8, 8))])
def test_eval_mode_reaches_every_replica_and_leaves_buffers_alone(factory, shape, execution):
    stack = ReplicaStack(factory, 3, init="independent")
    x_train = torch.randn(3, 16, *shape)
    stack.train()
    stack(x_train, execution=execution)  # training forward: per-node batch statistics, running stats updated
    buffers = {k: v.clone() for k, v in stack.stacked_buffers().items()}
    assert all(int(t) == 1 for t in buffers[next(k for k in buffers if k.endswith("num_batches_tracked"))])
    stack.eval()
    x = torch.randn(10, *shape)
    with torch.no_grad():
        first = stack(x, execution=execution, shared_input=True)
        second = stack(x, execution=execution, shared_input=True)
        average = stack.forward_average(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # deterministic: no dropout, running statistics
    for name, value in stack.stacked_buffers().items():  # neither the nodes nor the averaged model wrote a buffer
        assert torch.equal(value, buffers[name]), name
    for node in range(3):  # a node exported as a state_dict gives exactly the outputs that were evaluated
        model = factory()
        model.load_state_dict(stack.node_state(node))
        torch.testing.assert_close(model.eval()(x), first[node], rtol=1e-5, atol=1e-6)
    model = factory()
    model.load_state_dict(stack.average_state())
    torch.testing.assert_close(model.eval()(x), average, rtol=1e-5, atol=1e-6)
    stack.train()  # back in train mode: dropout and batch statistics again, buffers updated
    with torch.no_grad():
        stack(x_train, execution=execution)
    tracked = next(k for k in buffers if k.endswith("num_batches_tracked"))
    assert stack.stacked_buffers()[tracked].tolist() == [2, 2, 2]


def test_train_mode_is_read_at_forward_time():
    """Lightning restores modes after evaluation by setting ``training`` flags directly, not through ``train()``."""
    stack = ReplicaStack(bn_dropout_mlp, 2)
    stack.eval()
    stack(torch.randn(2, 4, 8), execution="vmap")
    assert not stack.template.training
    stack.training = True  # what lightning.pytorch.loops.utilities._ModuleMode.restore does
    stack(torch.randn(2, 4, 8), execution="vmap")
    assert all(m.training for m in stack.template.modules())


def test_averaged_model_buffers_are_means_and_fresh():
    stack = ReplicaStack(bn_dropout_mlp, 3, init="independent")
    stack(torch.randn(3, 16, 8) * torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1), execution="loop")
    state = stack.average_state()
    buffers = stack.stacked_buffers()
    torch.testing.assert_close(state["1.running_mean"], buffers["1.running_mean"].mean(0))
    torch.testing.assert_close(state["1.running_var"], buffers["1.running_var"].mean(0))
    tracked = state["1.num_batches_tracked"]
    assert int(tracked) == 1 and tracked.data_ptr() != buffers["1.num_batches_tracked"].data_ptr()
