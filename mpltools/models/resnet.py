"""ImageNet ResNets (18, 34, 50), the backbone of the MPL ImageNet-10% and JFT experiments.

Standard ResNet v1.5 (the stride sits on the 3x3 conv of a bottleneck, as in the authors'
``resnet_block`` and torchvision), plain ReLU, post-activation blocks, projection shortcut
= 1x1 conv -> BN. Differences from torchvision, all taken from the authors' code:

* dropout (default 0) before the final dense layer;
* BN decay 0.99 (PyTorch momentum 0.01) and epsilon 1e-3;
* dense weights ~ U(-1/sqrt(K), 1/sqrt(K)) with K = num_classes, bias 0.

Parameter counts equal torchvision's: ResNet-50 at 1000 classes has 25,557,032.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, add shortcut, ReLU (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, bn: dict):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, **bn)
        self.conv2 = nn.Conv2d(width, width, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width, **bn)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, width, stride, bn)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    """1x1 -> 3x3(stride) -> 1x1 (x4 channels), BN after each, ReLU between (ResNet-50)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, bn: dict):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, **bn)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width, **bn)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, **bn)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride, bn)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + residual)


def _shortcut(in_channels: int, out_channels: int, stride: int, bn: dict) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
        nn.BatchNorm2d(out_channels, **bn),
    )


# depth -> (block type, blocks per stage)
_LAYOUTS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int,
        dropout: float,
        bn: dict,
        zero_init_residual: bool,
    ):
        super().__init__()
        block, counts = _LAYOUTS[depth]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, 2, padding=3, bias=False),
            nn.BatchNorm2d(64, **bn),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, padding=1),
        )
        stages = []
        channels = 64
        for i, (count, width) in enumerate(zip(counts, (64, 128, 256, 512))):
            blocks = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(channels, width, stride, bn))
                channels = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights(num_classes, zero_init_residual)

    def _init_weights(self, num_classes: int, zero_init_residual: bool) -> None:
        # nn.init only: it also runs (as a no-op) on the meta device.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            # Each block starts as the identity (Goyal et al. 2017); helps large-batch training.
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn.weight)
        bound = 1.0 / math.sqrt(num_classes)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.fc(self.dropout(x))


def build_resnet(
    num_classes: int,
    input_shape: tuple[int, ...],
    *,
    depth: int,
    dropout: float = 0.0,
    bn_momentum: float = 0.01,
    bn_eps: float = 1e-3,
    zero_init_residual: bool = False,
) -> nn.Module:
    """Build ResNet-``depth`` (registry names ``resnet18``, ``resnet34``, ``resnet50``).

    Args:
        num_classes: output size.
        input_shape: ``(C, H, W)``; the stem downsamples by 4, the stages by 8 more, but any
            size >= 1 runs (small maps just stay 1x1).
        depth: 18, 34 or 50 (fixed by the registry name).
        dropout: drop rate before the final dense layer.
        bn_momentum: PyTorch BN momentum (= 1 - TF decay; the authors use decay 0.99).
        bn_eps: BN epsilon.
        zero_init_residual: start each block's last BN scale at 0.
    """
    if len(input_shape) != 3:
        raise ValueError(f"resnet needs image input (C, H, W), got input_shape {input_shape}.")
    if depth not in _LAYOUTS:
        raise ValueError(f"resnet depth must be one of {sorted(_LAYOUTS)}, got {depth!r}.")
    bn = {"momentum": bn_momentum, "eps": bn_eps}
    return ResNet(input_shape[0], num_classes, depth, dropout, bn, zero_init_residual)
