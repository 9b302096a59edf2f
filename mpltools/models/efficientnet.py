"""EfficientNet B0-B7, L2 and the MPL paper's B6-Wide, from the B0 block table + compound scaling.

One builder covers the family: the B0 table of MBConv stages below is scaled in width
(channels x width coefficient, rounded to multiples of 8) and depth (repeats x depth
coefficient, rounded up), exactly as the reference EfficientNet and the MPL authors' code do.
Blocks: 1x1 expand -> BN -> SiLU -> depthwise kxk -> BN -> SiLU -> squeeze-excite (0.25 of
the block's *input* channels) -> 1x1 project -> BN, with stochastic depth on the residual
whose drop rate grows linearly with block index.

Initialisation follows the authors' TF code: every conv ~ N(0, 2/fan_out) with
fan_out = k*k*out_channels/groups (so a depthwise kernel uses k*k), conv biases (only in the
SE convs) 0, dense ~ U(-1/sqrt(K), 1/sqrt(K)) with K = num_classes, dense bias 0.

Padding is symmetric (k // 2) rather than TF "SAME"; it changes no shapes at even sizes and
no parameter counts. The authors' CIFAR-only trick of stride 1 in the stem and the first two
strided stages is not implemented (use WRN for small images).

EfficientNet-L2 has ~480M parameters: size it on the meta device,
``with torch.device("meta"): build_model("efficientnet_l2", 1000, (3, 512, 512))``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn


class EfficientNetParams(NamedTuple):
    width: float  # channel multiplier
    depth: float  # repeat multiplier
    resolution: int  # the variant's default (eval) image size
    dropout: float  # drop rate before the final dense layer


# Registry name "efficientnet_<key>". The MPL paper trains L2 and B6-Wide at 512x512 (§2.5
# of reference/mpl-algorithm.md); the authors' code lists (4.3, 5.3, 600) for L2 and
# (5.0, 2.6, 800) for B6-Wide ("efficientnet-b6-mpl") as evaluation sizes.
EFFICIENTNET_PARAMS: dict[str, EfficientNetParams] = {
    "b0": EfficientNetParams(1.0, 1.0, 224, 0.2),
    "b1": EfficientNetParams(1.0, 1.1, 240, 0.2),
    "b2": EfficientNetParams(1.1, 1.2, 260, 0.3),
    "b3": EfficientNetParams(1.2, 1.4, 300, 0.3),
    "b4": EfficientNetParams(1.4, 1.8, 380, 0.4),
    "b5": EfficientNetParams(1.6, 2.2, 456, 0.4),
    "b6": EfficientNetParams(1.8, 2.6, 528, 0.5),
    "b7": EfficientNetParams(2.0, 3.1, 600, 0.5),
    "l2": EfficientNetParams(4.3, 5.3, 800, 0.5),
    # "B6-Wide" of the MPL paper: B6 depth with width 5.0.
    "b6_wide": EfficientNetParams(5.0, 2.6, 528, 0.5),
}

# The B0 stages: (expand ratio, kernel, stride of the first block, output channels, repeats).
_B0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
_SE_RATIO = 0.25


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count and round to a multiple of ``divisor``, never losing over 10%."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(repeats * depth))


class StochasticDepth(nn.Module):
    """Drop the whole residual branch per sample with probability ``p`` (training only)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _conv_bn_act(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int, bn: dict):
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch, **bn),
        nn.SiLU(),
    ]


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.expand(self.act(self.reduce(scale)))
        return x * torch.sigmoid(scale)


class MBConv(nn.Module):
    def __init__(self, in_ch, out_ch, expand, kernel, stride, drop_rate, bn):
        super().__init__()
        mid = in_ch * expand
        layers = _conv_bn_act(in_ch, mid, 1, 1, 1, bn) if expand != 1 else []
        layers += _conv_bn_act(mid, mid, kernel, stride, mid, bn)
        # The SE bottleneck is sized from the block's input channels, not the expanded ones.
        layers.append(SqueezeExcite(mid, max(1, int(in_ch * _SE_RATIO))))
        layers += [nn.Conv2d(mid, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch, **bn)]
        self.body = nn.Sequential(*layers)
        self.has_residual = stride == 1 and in_ch == out_ch
        # Only residual blocks can be dropped; elsewhere there is nothing to fall back to.
        self.drop = StochasticDepth(drop_rate) if self.has_residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return self.drop(out) + x if self.has_residual else out


class EfficientNet(nn.Module):
    def __init__(self, in_channels, num_classes, width, depth, dropout, drop_connect_rate, bn):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_act(in_channels, round_filters(32, width), 3, 2, 1, bn))
        repeats = [round_repeats(r, depth) for *_, r in _B0_STAGES]
        total = sum(repeats)
        blocks = []
        channels = round_filters(32, width)
        for (expand, kernel, stride, out, _), count in zip(_B0_STAGES, repeats):
            out = round_filters(out, width)
            for i in range(count):
                # Stochastic depth grows linearly from 0 at the first block.
                rate = drop_connect_rate * len(blocks) / total
                first = i == 0
                blocks.append(MBConv(channels, out, expand, kernel, stride if first else 1, rate, bn))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        head = round_filters(1280, width)
        self.head = nn.Sequential(*_conv_bn_act(channels, head, 1, 1, 1, bn))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(head, num_classes)
        self._init_weights(num_classes)

    def _init_weights(self, num_classes: int) -> None:
        # nn.init only: it also runs (as a no-op) on the meta device.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                fan_out = kh * kw * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        bound = 1.0 / math.sqrt(num_classes)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.dropout(self.pool(x).flatten(1)))


def build_efficientnet(
    num_classes: int,
    input_shape: tuple[int, ...],
    *,
    variant: str,
    dropout: float | None = None,
    drop_connect_rate: float = 0.2,
    bn_momentum: float = 0.01,
    bn_eps: float = 1e-3,
    width_coefficient: float | None = None,
    depth_coefficient: float | None = None,
) -> nn.Module:
    """Build an EfficientNet (registry names ``efficientnet_<variant>``).

    Args:
        num_classes: output size.
        input_shape: ``(C, H, W)``; the network downsamples by 32 but runs at any size.
            The variant's usual size is ``EFFICIENTNET_PARAMS[variant].resolution``.
        variant: a key of :data:`EFFICIENTNET_PARAMS` (fixed by the registry name).
        dropout: drop rate before the final dense layer; None takes the variant's.
        drop_connect_rate: stochastic-depth rate of the last block (0 disables it).
        bn_momentum: PyTorch BN momentum (= 1 - TF decay; the reference uses decay 0.99).
        bn_eps: BN epsilon.
        width_coefficient: override the variant's width (e.g. 0.25 for a tiny test model).
        depth_coefficient: override the variant's depth.
    """
    if len(input_shape) != 3:
        raise ValueError(f"efficientnet needs image input (C, H, W), got input_shape {input_shape}.")
    params = EFFICIENTNET_PARAMS[variant]
    return EfficientNet(
        in_channels=input_shape[0],
        num_classes=num_classes,
        width=params.width if width_coefficient is None else width_coefficient,
        depth=params.depth if depth_coefficient is None else depth_coefficient,
        dropout=params.dropout if dropout is None else dropout,
        drop_connect_rate=drop_connect_rate,
        bn={"momentum": bn_momentum, "eps": bn_eps},
    )
