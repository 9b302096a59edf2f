"""The settings of the augmentation views (data/transforms.py) and of RandAugment (data/randaugment.py).

A checkpoint's metadata keeps the eval view's part (`kind`, `image_size`); see `CheckpointMeta.eval_view`.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("cifar", "imagenet", "none")


@dataclass(frozen=True)
class AugmentSpec:
    kind: str = "cifar"            # "cifar" | "imagenet" | "none"
    image_size: int = 32           # output size (square)
    num_layers: int = 2            # RandAugment N
    magnitude: float = 16.0        # RandAugment M, 0..10 nominal scale, extrapolates above 10
    cutout: bool = True            # the CIFAR pipeline's extra Cutout (half-size image_size//4)
    translate_const: float | None = None  # None -> image_size//8 (cifar), 100 (imagenet)
    cutout_const: float | None = None     # None -> image_size//8 (cifar), 40 (imagenet)
    fill: int = 128
    flip: bool = True              # horizontal flips (turn off for digits)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"augment kind must be one of {KINDS}, got {self.kind!r}")
        if int(self.image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if int(self.num_layers) < 0:
            raise ValueError(f"num_layers must be >= 0, got {self.num_layers}")
        if float(self.magnitude) < 0:
            raise ValueError(f"magnitude must be >= 0, got {self.magnitude}")
        if not 0 <= int(self.fill) <= 255:
            raise ValueError(f"fill must be in 0..255, got {self.fill}")

    @property
    def effective_translate_const(self) -> float:
        # The authors' constants, unscaled: ImageNet's 100 px (cutout 40) were set for 224x224
        # inputs; set translate_const/cutout_const explicitly for small imagenet-kind images.
        if self.translate_const is not None:
            return float(self.translate_const)
        return float(self.image_size // 8) if self.kind != "imagenet" else 100.0

    @property
    def effective_cutout_const(self) -> float:
        if self.cutout_const is not None:
            return float(self.cutout_const)
        return float(self.image_size // 8) if self.kind != "imagenet" else 40.0
