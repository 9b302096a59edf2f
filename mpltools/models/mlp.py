"""A small fully connected network: the TwoMoon model of the MPL paper (§3.1).

Paper setting: ``D -> 8 -> 8 -> num_classes``, sigmoid activations, every weight and bias drawn
from U(-0.1, 0.1). The same builder also serves as the reduced teacher of Reduced MPL (an MLP
over a large teacher's predictions), which is why width, activation and init are options.
"""

from __future__ import annotations

import math

from torch import nn

_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """Linear layers with an activation between them; inputs of any shape are flattened."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: list[int],
        activation: str,
        init_range: float | None,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
            width = h
        self.body = nn.Sequential(*layers)
        # Every registry model names its final dense layer `fc`.
        self.fc = nn.Linear(width, num_classes)
        if init_range:
            # The paper's tiny init keeps sigmoids in their linear range, so the 6-label
            # TwoMoon problem starts from an almost constant classifier.
            for p in self.parameters():
                nn.init.uniform_(p, -init_range, init_range)

    def forward(self, x):
        return self.fc(self.body(x))


def build_mlp(
    num_classes: int,
    input_shape: tuple[int, ...],
    *,
    hidden: list[int] = (8, 8),
    activation: str = "sigmoid",
    init_range: float | None = 0.1,
) -> nn.Module:
    """Build the MLP.

    Args:
        num_classes: output size.
        input_shape: shape of one sample; flattened, so ``(D,)`` or any image shape works.
        hidden: widths of the hidden layers (empty: a linear classifier).
        activation: "sigmoid", "relu" or "tanh".
        init_range: every weight and bias ~ U(-init_range, init_range); 0 or None keeps
            PyTorch's default init.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"mlp activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}.")
    hidden = list(hidden)
    if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
        raise ValueError(f"mlp hidden must be a list of positive integers, got {hidden!r}.")
    return MLP(math.prod(input_shape), num_classes, hidden, activation, init_range)
