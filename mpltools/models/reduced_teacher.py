"""The reduced teacher of Reduced Meta Pseudo Labels (paper §4 / Appendix E).

It never sees an image: its input is a large, frozen teacher's stored logits z for one example
(`mpl reduced predict`), and its output is recalibrated logits

    T_R(z) = z + fc(body(features(z))),   features = softmax(z) (default) or z itself,

with `fc` initialised to zero, so at the start T_R is exactly the identity map on logits (its
distribution is the large teacher's). The MPL feedback then only has to learn a small correction,
which an MLP can represent (reference/mpl-algorithm.md §4, implementation notes (a)-(d)).
"""

from __future__ import annotations

import math

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


class ReducedTeacher(nn.Module):
    def __init__(self, num_classes: int, hidden: list[int], activation: str, features: str):
        super().__init__()
        self.features = features
        layers: list[nn.Module] = []
        width = num_classes
        for h in hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
            width = h
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)  # every registry model names its last dense layer `fc`
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(self.fc.weight.dtype)  # stored logits may be float16
        feats = torch.softmax(z, dim=-1) if self.features == "probs" else z
        return z + self.fc(self.body(feats))


def build_reduced_teacher(
    num_classes: int,
    input_shape: tuple[int, ...],
    *,
    hidden: list[int] = (128,),
    activation: str = "relu",
    features: str = "probs",
) -> nn.Module:
    """Build the reduced teacher.

    Args:
        num_classes: number of classes; the input is a logit vector of the same size.
        input_shape: must be ``(num_classes,)``: the large teacher's logits, not an image.
        hidden: widths of the hidden layers (empty: a linear correction).
        activation: "relu", "tanh", "sigmoid" or "gelu".
        features: what the MLP reads: "probs" (softmax of the stored logits; bounded, the
            default) or "logits".
    """
    if math.prod(input_shape) != num_classes or len(input_shape) != 1:
        raise ValueError(
            f"reduced_teacher reads a large teacher's logits, so its input shape must be ({num_classes},), "
            f"not {tuple(input_shape)}; it cannot take images (train it with `mpl reduced train`)."
        )
    if activation not in _ACTIVATIONS:
        raise ValueError(f"reduced_teacher activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}.")
    if features not in ("probs", "logits"):
        raise ValueError(f"reduced_teacher features must be 'probs' or 'logits', got {features!r}.")
    hidden = list(hidden)
    if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
        raise ValueError(f"reduced_teacher hidden must be a list of positive integers, got {hidden!r}.")
    return ReducedTeacher(num_classes, hidden, activation, features)
