"""Wide ResNet (WRN-depth-widen), as in the MPL authors' code for CIFAR-10-4K and SVHN-1K.

Details that differ from most PyTorch WRNs and matter for reproducing MPL
(reference/mpl-algorithm.md §1.11 and §7 item 12):

* leaky ReLU with slope 0.2 everywhere (the authors' ``relu`` helper defaults to it);
* pre-activation basic blocks; a projection shortcut is a 1x1 conv applied to the block's
  *activated* input (BN -> leaky ReLU -> 1x1 conv, the BN shared with the main path);
* dropout only before the final dense layer (default 0.2), never inside blocks;
* conv weights ~ N(0, 2/fan_out), no conv biases; dense weights ~ U(-1/sqrt(K), 1/sqrt(K))
  with K = num_classes (the authors' initializer reads the output dimension), dense bias 0;
* BN decay 0.99 (PyTorch momentum 0.01) and epsilon 1e-3.

Every activation runs in place on its BN's output: BN's backward reads its input, not its
output, and leaky ReLU's backward can be computed from its result (the registry allows slopes >= 0
only), so nothing autograd saved is overwritten, and each block keeps two feature maps fewer for the
backward pass (peak RSS of an MPL step: ~1.4 -> ~1.2 GB, benchmarks/README.md). Autograd checks
this (a saved tensor modified in place raises), and tests/unit/test_inplace_activations.py runs
every feedback path, the double-backward of soft pseudo labels included, against out-of-place twins.

Stage widths are ``[stem_width, 16k, 32k, 64k]`` with (depth - 4) / 6 blocks per stage and
strides 1/2/2. ``stem_width`` defaults to 16 (Zagoruyko & Komodakis; 1,467,610 parameters
for WRN-28-2 at 10 classes). The released TF code (modeling.py ``Wrn28k``) uses
``stem_width = 16k``, which drops the first block's projection: pass ``stem_width=32`` for
WRN-28-2 to get that network exactly (1,472,170 parameters). The paper quotes 1.45M.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PreActBlock(nn.Module):
    """BN -> act -> conv3x3(stride) -> BN -> act -> conv3x3, plus identity or 1x1 projection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, bn: dict, slope: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, **bn)
        self.act1 = nn.LeakyReLU(slope, inplace=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, **bn)
        self.act2 = nn.LeakyReLU(slope, inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        # Authors' wrn_block: a projection reads the activated input; an identity the raw one.
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + residual


class WideResNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int,
        widen: int,
        dropout: float,
        bn: dict,
        slope: float,
        stem_width: int,
    ):
        super().__init__()
        blocks_per_stage = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, stem_width, 3, 1, padding=1, bias=False)
        stages = []
        channels = stem_width
        for width, stride in zip(widths, (1, 2, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(PreActBlock(channels, width, stride if i == 0 else 1, bn, slope))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        # Pre-activation blocks end on a conv, so the head normalises and activates first.
        self.head_bn = nn.BatchNorm2d(channels, **bn)
        self.head_act = nn.LeakyReLU(slope, inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights(num_classes)

    def _init_weights(self, num_classes: int) -> None:
        # nn.init only: it also runs (as a no-op) on the meta device.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # std = sqrt(2 / (k * k * out_channels)), the authors' conv initializer.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        bound = 1.0 / math.sqrt(num_classes)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = self.pool(self.head_act(self.head_bn(x))).flatten(1)
        return self.fc(self.dropout(x))


def build_wide_resnet(
    num_classes: int,
    input_shape: tuple[int, ...],
    *,
    depth: int = 28,
    widen: int = 2,
    dropout: float = 0.2,
    bn_momentum: float = 0.01,
    bn_eps: float = 1e-3,
    leaky_slope: float = 0.2,
    stem_width: int = 16,
) -> nn.Module:
    """Build WRN-depth-widen (registry names ``wide_resnet``, ``wrn28_2``, ``wrn28_8``).

    Args:
        num_classes: output size.
        input_shape: ``(C, H, W)``; any channel count, any size (8x8 digits included).
        depth: total depth; (depth - 4) must be a multiple of 6 (28 -> 4 blocks per stage).
        widen: width factor k.
        dropout: drop rate before the final dense layer only.
        bn_momentum: PyTorch BN momentum (= 1 - TF decay; the authors use decay 0.99).
        bn_eps: BN epsilon.
        leaky_slope: negative slope of every activation (0 gives plain ReLU).
        stem_width: channels of the first conv (16; the released TF code uses 16 * widen).
    """
    if len(input_shape) != 3:
        raise ValueError(f"wide_resnet needs image input (C, H, W), got input_shape {input_shape}.")
    # Generic ranges (positive ints, dropout in [0, 1), ...) are checked by the registry.
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"wide_resnet depth must be 6n + 4 (e.g. 16, 22, 28, 40), got {depth}.")
    bn = {"momentum": bn_momentum, "eps": bn_eps}
    return WideResNet(input_shape[0], num_classes, depth, widen, dropout, bn, leaky_slope, stem_width)
