"""Per-node models: parameter counts, shapes, initialization, and equal results on both ReplicaStack paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_mosaic.models import GNLeNet, MatrixFactorization, ResNet8, ResNet18
from lightning_mosaic.replicas import ReplicaStack


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("factory", "params"),
    [
        (lambda: GNLeNet(num_classes=10), 89_834),  # decentralizepy's GN-LeNet
        (lambda: GNLeNet(num_classes=100), 182_084),  # + 90 * (1024 + 1)
        (lambda: ResNet8(num_classes=10), 78_042),
        (lambda: ResNet8(num_classes=100), 83_892),
        (lambda: ResNet18(num_classes=10), 11_173_962),  # the BatchNorm ResNet-18 for CIFAR has the same count
        (lambda: ResNet18(num_classes=100), 11_220_132),
        (lambda: MatrixFactorization(943, 1682), (943 + 1682) * 21),
        (lambda: MatrixFactorization(943, 1682, bias=False), (943 + 1682) * 20),
    ],
)
def test_parameter_counts(factory, params):
    assert count(factory()) == params


def test_image_models_output_shapes():
    x = torch.randn(3, 3, 32, 32)
    assert GNLeNet(num_classes=100)(x).shape == (3, 100)
    assert ResNet8(num_classes=100, groups=4)(x).shape == (3, 100)
    norms = [m for m in ResNet18(num_classes=100).modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
    assert norms == []  # no BatchNorm anywhere
    with pytest.raises(ValueError, match="16 channels are not divisible by 3"):
        ResNet8(groups=3)


def test_matrix_factorization_forward_and_init():
    torch.manual_seed(0)
    model = MatrixFactorization(5, 7, factors=4, global_mean=3.5)
    assert model.user_factors.abs().max() <= 0.05 and model.item_factors.abs().max() <= 0.05
    assert model.user_factors.std() > 0.02  # uniform(-0.05, 0.05), not the N(0, 1) of nn.Embedding
    assert torch.all(model.user_bias == 0) and torch.all(model.item_bias == 0)
    with torch.no_grad():
        model.user_bias[2] = 1.0
        model.item_bias[6] = -0.5
    x = torch.tensor([[2, 6], [0, 0], [4, 3]])
    out = model(x)
    assert out.shape == (3,)
    expected = 3.5 + (model.user_factors[x[:, 0]] * model.item_factors[x[:, 1]]).sum(1)
    expected = expected + model.user_bias[x[:, 0]] + model.item_bias[x[:, 1]]
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match=r"shaped \(B, 2\)"):
        model(torch.tensor([1, 2]))
    with pytest.raises(IndexError):
        model(torch.tensor([[5, 0]]))
    with pytest.raises(IndexError):
        model(torch.tensor([[-1, 0]]))  # not read from the end of the table


class EmbeddingMF(MatrixFactorization):
    """The lookups written with ``F.embedding`` (the reference for MatrixFactorization's ``index_select``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        users, items = x[:, 0], x[:, 1]
        out = (F.embedding(users, self.user_factors) * F.embedding(items, self.item_factors)).sum(-1)
        out = out + F.embedding(users, self.user_bias.unsqueeze(-1)).squeeze(-1)
        out = out + F.embedding(items, self.item_bias.unsqueeze(-1)).squeeze(-1)
        return out + self.global_mean


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_matrix_factorization_lookups_give_f_embeddings_outputs_and_gradients_bit_for_bit(execution):
    """One user per node and items repeated within a node's batch (a small MovieLens shard wraps into B): every
    row's gradient adds the same terms in the same order as F.embedding's backward."""
    n, users, items, b = 6, 9, 13, 32
    stacks = {
        kind: ReplicaStack(lambda kind=kind: kind(users, items, factors=5, global_mean=3.5), n, init="independent")
        for kind in (MatrixFactorization, EmbeddingMF)
    }
    with torch.no_grad():
        stacks[EmbeddingMF].flat.copy_(torch.randn(n, stacks[EmbeddingMF].num_coordinates))
        stacks[MatrixFactorization].flat.copy_(stacks[EmbeddingMF].flat)
    g = torch.Generator().manual_seed(0)
    x = torch.stack([torch.arange(n)[:, None].expand(n, b), torch.randint(0, 4, (n, b), generator=g)], dim=-1)
    target = torch.rand(n, b, generator=g) * 4 + 1
    results = {}
    for kind, stack in stacks.items():
        out = stack(x, execution=execution)
        ((out - target) ** 2).mean(dim=1).sum().backward()
        results[kind] = (out.detach(), stack.flat.grad)
    for new, old in zip(results[MatrixFactorization], results[EmbeddingMF], strict=True):
        assert torch.equal(new.view(torch.int32), old.view(torch.int32))
    assert results[MatrixFactorization][1].abs().sum() > 0
    if execution == "vmap":
        with pytest.raises(RuntimeError, match="out of bounds"):
            stacks[MatrixFactorization](torch.full_like(x, users), execution="vmap")


@pytest.mark.parametrize(
    ("factory", "make_input"),
    [
        (
            lambda: MatrixFactorization(40, 30, factors=6, global_mean=3.0),
            lambda n, b: torch.stack([torch.randint(0, 40, (n, b)), torch.randint(0, 30, (n, b))], dim=-1),
        ),
        (lambda: ResNet8(num_classes=5), lambda n, b: torch.randn(n, b, 3, 8, 8)),
    ],  # fmt: skip
    ids=["mf", "resnet8"],
)
def test_vmap_and_loop_paths_agree_on_outputs_and_gradients(factory, make_input, one_torch_thread):
    """Embedding gradients under vmap (row gathers of a batched weight) equal the per-node loop's."""
    torch.manual_seed(0)
    stack = ReplicaStack(factory, 3, init="independent", seed=1)
    x = make_input(3, 8)
    grads, outputs = {}, {}
    for execution in ("vmap", "loop"):
        stack.flat.grad = None
        out = stack(x, execution=execution)
        out.float().square().mean(dim=tuple(range(1, out.dim()))).sum().backward()
        grads[execution], outputs[execution] = stack.flat.grad.clone(), out.detach()
    torch.testing.assert_close(outputs["vmap"], outputs["loop"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads["vmap"], grads["loop"], rtol=1e-5, atol=1e-6)
    assert grads["vmap"].abs().sum() > 0
