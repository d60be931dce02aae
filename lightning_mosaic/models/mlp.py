"""A small multilayer perceptron for the 8x8 handwritten digits of the quickstart."""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] * len(hidden) -> Linear.

    Args:
        in_features: Input size after flattening (64 for 1x8x8 digits).
        num_classes: Output classes.
        hidden: Widths of the hidden layers.

    Shapes:
        input ``(B, *)`` with ``in_features`` elements per sample -> logits ``(B, num_classes)``.
    """

    def __init__(self, in_features: int = 64, num_classes: int = 10, hidden: tuple[int, ...] = (64,)) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 2 or any(h < 1 for h in hidden):
            raise ValueError(
                f"MLP needs in_features >= 1, num_classes >= 2 and positive hidden widths, got "
                f"in_features={in_features}, num_classes={num_classes}, hidden={hidden}"
            )
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
