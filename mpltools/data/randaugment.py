"""The authors' modified RandAugment (reference/mpl-algorithm.md §3.2), per image, on PIL images.

Port of `meta_pseudo_labels/augment.py` (google-research), written with PIL and numpy:

* 15 ops (no Identity, no SolarizeAdd), N layers, one fixed magnitude M for every op on the
  0..10 nominal scale; M > 10 extrapolates (rotate ±3M degrees, shear ±0.03M, translate
  ±(M/10)·translate_const px, enhancement factor 0.18M + 0.1, posterize int(0.4M) bits,
  solarize threshold int(25.6M) wrapped to uint8, Cutout half-size int((M/10)·cutout_const)).
* Per image: one apply probability p ~ U(0.2, 0.8); each layer picks an op uniformly and applies
  it if u <= p.
* Geometric ops use nearest-neighbour sampling (tf.contrib.image's default) and fill the
  uncovered area with `spec.fill` (128); Cutout fills with `spec.fill` as well.

Randomness: only the `numpy.random.Generator` passed in. `rand_augment` draws a fixed-size block
of `1 + 5 * num_layers` uniforms per image whatever ops are chosen, so the number of draws per
image never depends on the image or the ops; `apply_op` draws 3 (sign, cutout row, cutout col).

Deliberate deviations from the TF code (all are TF bugs/quirks we do not copy):
* Color/Contrast/Brightness/Sharpness blend with PIL's `Image.blend`, which clips to 0..255.
  The TF `blend` clips the [0, 1]-scaled float image to [0, 255] (a no-op) before a
  non-saturating cast, so extrapolated pixels (factor 2.98 > 1) overflow in a platform-dependent
  way instead of saturating.
* Contrast blends towards the mean grey level (PIL semantics, which the TF op claims to copy). The
  TF op's "mean" is `sum(histogram) / 256` = number of pixels / 256 (4.0 on 32x32), not the mean.
* Posterize clamps the bit count to 1..8 (TF would shift by a negative amount above M = 22.5 and
  zero the image below M = 2.5).
* Rotation is about PIL's centre (w/2, h/2) rather than ((w-1)/2, (h-1)/2).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

from mpltools.data.augment_spec import AugmentSpec

__all__ = ["RANDAUGMENT_OPS", "apply_op", "cutout", "op_level", "rand_augment", "UNIFORMS_PER_LAYER"]

RANDAUGMENT_OPS: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize",
    "Solarize", "Color", "Contrast", "Brightness", "Sharpness",
    "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout",
)
_MAX_LEVEL = 10.0
UNIFORMS_PER_LAYER = 5  # op choice, apply coin, sign, cutout row, cutout column
_NEAREST = Image.Resampling.NEAREST
_AFFINE = Image.Transform.AFFINE


def _mult_to_arg(magnitude: float, multiplier: float) -> int:
    # TF: tf.cast(tf.cast(level, float32) / 10 * multiplier, int32) -- float32 arithmetic, truncation.
    return int(np.float32(magnitude) / np.float32(_MAX_LEVEL) * np.float32(multiplier))


def op_level(name: str, magnitude: float, spec: AugmentSpec) -> float | int | None:
    """The op's (unsigned) argument at magnitude M; None for ops without one."""
    m = float(magnitude)
    if name == "Rotate":
        return m / _MAX_LEVEL * 30.0                      # degrees, random sign
    if name in ("ShearX", "ShearY"):
        return m / _MAX_LEVEL * 0.3                       # shear level, random sign
    if name in ("TranslateX", "TranslateY"):
        return m / _MAX_LEVEL * float(spec.effective_translate_const)  # pixels, random sign
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return m / _MAX_LEVEL * 1.8 + 0.1                 # enhancement factor (2.98 at M=16)
    if name == "Posterize":
        return min(8, max(1, _mult_to_arg(m, 4)))         # bits kept; clamped (deviation, see top)
    if name == "Solarize":
        # Quirk kept on purpose: TF computes int(25.6*M) (409 at M=16) and casts it to the uint8
        # image dtype, which wraps modulo 256 -> effective threshold 153 (M=16), 179 (M=17),
        # 0 (M=10: every pixel is inverted).
        return _mult_to_arg(m, 256) % 256
    if name == "Cutout":
        return _mult_to_arg(m, spec.effective_cutout_const)  # half-size of the square
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    raise ValueError(f"unknown RandAugment op {name!r}; expected one of {RANDAUGMENT_OPS}")


# ---------------------------------------------------------------------------------------------
# Look-up-table ops (C speed through Image.point)
# ---------------------------------------------------------------------------------------------

def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@lru_cache(maxsize=None)
def _posterize_lut(bits: int) -> np.ndarray:
    shift = 8 - bits
    return _frozen(((np.arange(256) >> shift) << shift).astype(np.uint8))


@lru_cache(maxsize=None)
def _solarize_lut(threshold: int) -> np.ndarray:
    i = np.arange(256)
    return _frozen(np.where(i < threshold, i, 255 - i).astype(np.uint8))


_INVERT_LUT = _frozen(np.arange(255, -1, -1, dtype=np.uint8))


def _fill(img: Image.Image, value: int) -> int | tuple[int, ...]:
    return value if img.mode == "L" else (value,) * len(img.getbands())


# Below this many pixels numpy LUTs win (PIL's Image.point rounds a Python list of 256 * bands
# entries on every call, ~50 us); above it PIL's C loops win.
_SMALL_IMAGE = 64 * 64


def _point(img: Image.Image, lut: np.ndarray, a: np.ndarray | None = None) -> Image.Image:
    """Look-up table op: `lut` is (256,) for every band or (bands, 256) per band; `a` is
    `np.asarray(img)` when the caller already has it."""
    bands = len(img.getbands())
    if img.size[0] * img.size[1] > _SMALL_IMAGE:
        flat = np.broadcast_to(lut, (bands, 256)) if lut.ndim == 1 else lut
        return img.point(flat.ravel().tolist())
    a = np.asarray(img) if a is None else a
    if lut.ndim == 2 and bands > 1:
        return Image.fromarray(np.take(lut.ravel(), a + _band_offsets(bands)))
    return Image.fromarray(np.take(lut.reshape(-1), a))


@lru_cache(maxsize=None)
def _band_offsets(bands: int) -> np.ndarray:
    return _frozen(np.arange(bands, dtype=np.intp) * 256)


def _autocontrast(img: Image.Image) -> Image.Image:
    # Per channel, stretch [min, max] to [0, 255]; channels with max == min are left unchanged.
    ext = img.getextrema()
    ext = (ext,) if img.mode == "L" else ext
    lo = np.array([e[0] for e in ext], np.float32)
    hi = np.array([e[1] for e in ext], np.float32)
    if np.all(hi <= lo):
        return img
    ramp = np.arange(256, dtype=np.float32)[None, :]
    stretch = (hi > lo)[:, None]
    scale = np.where(stretch, 255.0 / np.maximum(hi - lo, 1.0)[:, None], 1.0)
    offset = np.where(stretch, -lo[:, None] * scale, 0.0)
    return _point(img, np.clip(ramp * scale + offset, 0.0, 255.0).astype(np.uint8))


def _equalize(img: Image.Image) -> Image.Image:
    # PIL/TF equalize, per channel: lut = (cumsum shifted by one + step//2) // step.
    bands = len(img.getbands())
    a = None
    if img.size[0] * img.size[1] > _SMALL_IMAGE:
        hist = np.asarray(img.histogram(), dtype=np.int64).reshape(bands, 256)
    else:
        a = np.asarray(img)
        idx = a.reshape(-1, bands) + _band_offsets(bands)
        hist = np.bincount(idx.ravel(), minlength=256 * bands).reshape(bands, 256)
    # step = (pixels - count of the last non-empty bin) // 255; step == 0 -> channel unchanged.
    last_bin = 255 - np.argmax(hist[:, ::-1] != 0, axis=1)
    step = (hist.sum(axis=1) - hist[np.arange(bands), last_bin]) // 255
    if not step.any():
        return img
    safe = np.maximum(step, 1)[:, None]
    luts = np.empty((bands, 256), np.int64)
    luts[:, 0] = 0
    luts[:, 1:] = (np.cumsum(hist, axis=1)[:, :-1] + safe // 2) // safe
    luts = np.where(step[:, None] == 0, np.arange(256), np.clip(luts, 0, 255))
    return _point(img, luts.astype(np.uint8), a)


def _blend(degenerate: Image.Image, img: Image.Image, factor: float) -> Image.Image:
    # out = degenerate + factor * (img - degenerate), clipped to 0..255 (see deviations at top).
    return Image.blend(degenerate, img, factor)


def _contrast_degenerate(img: Image.Image) -> Image.Image:
    # PIL ImageEnhance.Contrast: a flat image at the rounded mean grey level.
    grey = img if img.mode == "L" else img.convert("L")
    mean = int(np.asarray(grey).mean() + 0.5)
    return Image.new(img.mode, img.size, _fill(img, mean))


def cutout(img: Image.Image, half: int, u_row: float, u_col: float, fill: int) -> Image.Image:
    w, h = img.size
    cy, cx = int(u_row * h), int(u_col * w)  # centre uniform over the image (TF: [0, H) x [0, W))
    box = (max(0, cx - half), max(0, cy - half), min(w, cx + half), min(h, cy + half))
    if half <= 0 or box[2] <= box[0] or box[3] <= box[1]:
        return img
    out = img.copy()
    out.paste(_fill(img, fill), box)
    return out


def _apply(img: Image.Image, name: str, magnitude: float, spec: AugmentSpec, u) -> Image.Image:
    """Apply op `name` with three uniforms `u` (sign, cutout row, cutout column)."""
    level = op_level(name, magnitude, spec)
    sign = -1.0 if u[0] < 0.5 else 1.0
    if name == "AutoContrast":
        return _autocontrast(img)
    if name == "Equalize":
        return _equalize(img)
    if name == "Invert":
        return _point(img, _INVERT_LUT)
    if name == "Posterize":
        return img if level >= 8 else _point(img, _posterize_lut(level))
    if name == "Solarize":
        return _point(img, _solarize_lut(level))
    if name == "Rotate":
        return img.rotate(sign * level, resample=_NEAREST, fillcolor=_fill(img, spec.fill))
    if name in ("ShearX", "ShearY", "TranslateX", "TranslateY"):
        v = sign * level
        # PIL affine data maps output (x, y) -> input (a x + b y + c, d x + e y + f), as TF's
        # projective transforms do: ShearX [1, v, 0, 0, 1, 0]; TranslateX shifts by -v.
        data = {
            "ShearX": (1.0, v, 0.0, 0.0, 1.0, 0.0),
            "ShearY": (1.0, 0.0, 0.0, v, 1.0, 0.0),
            "TranslateX": (1.0, 0.0, v, 0.0, 1.0, 0.0),
            "TranslateY": (1.0, 0.0, 0.0, 0.0, 1.0, v),
        }[name]
        return img.transform(img.size, _AFFINE, data, resample=_NEAREST, fillcolor=_fill(img, spec.fill))
    if name == "Color":
        if img.mode == "L":  # no colour to enhance on a grey image
            return img
        return _blend(img.convert("L").convert(img.mode), img, level)
    if name == "Contrast":
        return _blend(_contrast_degenerate(img), img, level)
    if name == "Brightness":
        return _blend(Image.new(img.mode, img.size, _fill(img, 0)), img, level)
    if name == "Sharpness":
        if min(img.size) < 3:
            return img
        # PIL's SMOOTH kernel [[1,1,1],[1,5,1],[1,1,1]]/13 keeps the border pixels, as TF does.
        return _blend(img.filter(ImageFilter.SMOOTH), img, level)
    if name == "Cutout":
        return cutout(img, level, u[1], u[2], spec.fill)
    raise ValueError(f"unknown RandAugment op {name!r}; expected one of {RANDAUGMENT_OPS}")


def apply_op(img_pil: Image.Image, name: str, magnitude: float, spec: AugmentSpec,
             rng: np.random.Generator) -> Image.Image:
    """Apply one RandAugment op (always, no probability) to a PIL 'L' or 'RGB' image."""
    if name not in RANDAUGMENT_OPS:
        raise ValueError(f"unknown RandAugment op {name!r}; expected one of {RANDAUGMENT_OPS}")
    return _apply(img_pil, name, magnitude, spec, rng.random(3))


def rand_augment(img_pil: Image.Image, spec: AugmentSpec, rng: np.random.Generator, *,
                 return_ops: bool = False):
    """RandAugment one image. With `return_ops`, also return [(op name, applied?), ...] per layer."""
    n = spec.num_layers
    u = rng.random(1 + UNIFORMS_PER_LAYER * n)
    prob = 0.2 + 0.6 * u[0]  # p ~ U(0.2, 0.8), once per image
    plan = []
    n_ops = len(RANDAUGMENT_OPS)
    for layer in range(n):
        base = 1 + UNIFORMS_PER_LAYER * layer
        name = RANDAUGMENT_OPS[min(int(u[base] * n_ops), n_ops - 1)]
        applied = bool(u[base + 1] <= prob)
        if applied:
            img_pil = _apply(img_pil, name, spec.magnitude, spec, u[base + 2:base + 5])
        plan.append((name, applied))
    return (img_pil, plan) if return_ops else img_pil
