"""A small, fast CNN for CPU smoke runs: 8x8 digits, tiny synthetic images, tests.

Three conv3x3-BN-leakyReLU blocks with 2x2 max pooling after the first two, global average
pooling, dropout, dense. About 60k parameters at the default width: a few milliseconds per
batch on two CPU cores, yet it learns the digits well, so end-to-end tests see real learning.
"""

from __future__ import annotations

from torch import nn


def _block(in_channels: int, out_channels: int) -> list[nn.Module]:
    # No conv bias: the BN right after it has its own shift.
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        # Same activation as the authors' WRN, so small runs behave like the real model. In place:
        # BN's backward reads its input, not its output, so the output is free to overwrite.
        nn.LeakyReLU(0.2, inplace=True),
    ]


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int, dropout: float):
        super().__init__()
        self.features = nn.Sequential(
            *_block(in_channels, width),
            # ceil_mode keeps odd or tiny sizes alive (5x5 -> 3x3, 1x1 -> 1x1).
            nn.MaxPool2d(2, ceil_mode=True),
            *_block(width, 2 * width),
            nn.MaxPool2d(2, ceil_mode=True),
            *_block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu", a=0.2)

    def forward(self, x):
        return self.fc(self.dropout(self.features(x)))


def build_small_cnn(
    num_classes: int,
    input_shape: tuple[int, ...],
    *,
    width: int = 32,
    dropout: float = 0.0,
) -> nn.Module:
    """Build the small CNN.

    Args:
        num_classes: output size.
        input_shape: ``(C, H, W)``; any channel count and any spatial size.
        width: channels of the first block (the later blocks use twice as many).
        dropout: drop rate before the final dense layer.
    """
    if len(input_shape) != 3:
        raise ValueError(f"small_cnn needs image input (C, H, W), got input_shape {input_shape}.")
    return SmallCNN(input_shape[0], num_classes, width, dropout)
