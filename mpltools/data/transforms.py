"""Per-image augmentation views (weak, strong, eval) and batch normalisation.

Follows the authors' pipelines (reference/mpl-algorithm.md §3, google-research
`meta_pseudo_labels/data_utils.py`):

* cifar   weak   = random flip + pad image_size//8 with `fill` + random crop back to image_size.
          strong = weak -> RandAugment -> Cutout (16x16 on 32x32, centre uniform, clipped at the
                   border) -> a second flip + pad + crop.  The strong view is built on the weak
                   view, so `weak_and_strong` returns (w, strong-from-w).
* imagenet weak  = TF-style random-resized crop (sample_distorted_bounding_box: area 0.08..1,
                   aspect 3/4..4/3, min 10% covered, 10 attempts, centre-crop fallback) + bicubic
                   resize + random flip.
          strong = the same crop -> its own flip -> RandAugment (no extra Cutout).
* none    every view is the identity (2-D vector data, plain MLP runs).
* eval    cifar: identity (bicubic resize if the size differs); imagenet: centre crop of
          224/256 of the shorter side + bicubic resize.

Workers call these on decoded images: input is a numpy array HxW / HxWx1 / HxWx3 (uint8; other
dtypes are read on the 0..255 scale, clipped and rounded; a 4th alpha channel is dropped) or a
PIL image; output is a writable, C-contiguous uint8 array HxWxC with C = 1 or 3.

Randomness comes only from the generator argument (a `numpy.random.Generator`, or anything with
its `random(n)`: the training streams pass one pre-drawn row per image, data/sample_random.py), and
every view draws a fixed number of uniforms per image (`draws`; independent of the image and of the
ops chosen), so a stream is reproducible and resumable from (seed, rank, worker, batch index).
With the same generator state, `weak_and_strong(x)` equals `(weak(x), strong(x))` for both kinds.

Deviations from the TF pipeline: resizing uses PIL's bicubic filter (antialiased) instead of
`tf.image.resize_bicubic`; see randaugment.py for the op-level deviations.
"""

from __future__ import annotations

from typing import Sequence

import math

import numpy as np
from PIL import Image

from mpltools.data.augment_spec import AugmentSpec
from mpltools.data.randaugment import (
    RANDAUGMENT_OPS,
    UNIFORMS_PER_LAYER,
    apply_op,
    cutout,
    op_level,
    rand_augment,
)

__all__ = [
    "AugmentSpec", "NORMALISATION", "RANDAUGMENT_OPS", "apply_op", "draws", "eval_view", "op_level",
    "rand_augment", "strong", "to_float_batch", "weak", "weak_and_strong",
]

# Per-channel mean/std in 0..1 units. The authors' code keeps CIFAR constants in 0..255 units
# (x255); these are the same numbers divided back.  The authors reuse the CIFAR-10 constants for
# CIFAR-100; we use CIFAR-100's own published statistics.  "none" broadcasts over channels.
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.491400, 0.482158, 0.4465309), (0.247032, 0.243485, 0.26159)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0,), (1.0,)),
}


# ---------------------------------------------------------------------------------------------
# Conversions
# ---------------------------------------------------------------------------------------------

def _as_hwc(img) -> np.ndarray:
    """Any accepted input -> uint8 HxWxC (C in {1, 3}); may be a read-only view of the input."""
    if isinstance(img, Image.Image):
        if img.mode not in ("L", "RGB"):
            grey = img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
            img = img.convert("L" if grey else "RGB")
        a = np.asarray(img)
    else:
        a = np.asarray(img)
        if a.dtype != np.uint8:
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
                raise TypeError(f"image must be numeric, got dtype {a.dtype}")
            a = np.clip(np.rint(a.astype(np.float64)), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        return a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"image must be HxW or HxWxC with C in 1..4, got shape {a.shape}")
    if a.shape[2] in (2, 4):  # drop alpha
        a = a[:, :, : a.shape[2] - 1]
    return a


def _to_pil(a: np.ndarray) -> Image.Image:
    return Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)


def _as_pil(img) -> Image.Image:
    if isinstance(img, Image.Image) and img.mode in ("L", "RGB"):
        return img
    return _to_pil(_as_hwc(img))


def _from_pil(im: Image.Image) -> np.ndarray:
    a = np.array(im)  # a copy: writable, C-contiguous
    return a[:, :, None] if a.ndim == 2 else a


def _owned(a: np.ndarray) -> np.ndarray:
    return np.array(a, dtype=np.uint8, order="C", copy=True)


def _resize(im: Image.Image, size: int, box=None) -> Image.Image:
    if box is not None:  # crop first: resize(box=...) would blend in pixels outside the crop
        im = im.crop(box)
    return im.resize((size, size), Image.Resampling.BICUBIC)


# ---------------------------------------------------------------------------------------------
# CIFAR-style pieces
# ---------------------------------------------------------------------------------------------

_JITTER_UNIFORMS = 3  # flip, crop row, crop column
_CUTOUT_UNIFORMS = 2  # centre row, centre column


def _cifar_input(img, size: int) -> np.ndarray:
    a = _as_hwc(img)
    if a.shape[0] != size or a.shape[1] != size:
        a = _from_pil(_resize(_to_pil(a), size))
    return a


def _flip_and_jitter(a: np.ndarray, u, pad: int, fill: int, flip: bool) -> np.ndarray:
    """Random flip, pad by `pad` with `fill`, random crop of the original size (a new array)."""
    h, w, c = a.shape
    if flip and u[0] < 0.5:
        a = a[:, ::-1]
    dy = int(u[1] * (2 * pad + 1)) - pad  # out[y, x] = a[y + dy, x + dx], 128 outside
    dx = int(u[2] * (2 * pad + 1)) - pad
    if dy == 0 and dx == 0:
        return _owned(a)
    out = np.full((h, w, c), fill, np.uint8)
    y0, y1 = max(0, -dy), min(h, h - dy)
    x0, x1 = max(0, -dx), min(w, w - dx)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = a[y0 + dy:y1 + dy, x0 + dx:x1 + dx]
    return out


def _cifar_weak(img, spec: AugmentSpec, rng: np.random.Generator) -> np.ndarray:
    a = _cifar_input(img, spec.image_size)
    u = rng.random(_JITTER_UNIFORMS)
    return _flip_and_jitter(a, u, spec.image_size // 8, spec.fill, spec.flip)


def _cifar_strong_from_weak(w: np.ndarray, spec: AugmentSpec, rng: np.random.Generator,
                            return_ops: bool):
    im, ops = rand_augment(_to_pil(w), spec, rng, return_ops=True)
    u = rng.random(_CUTOUT_UNIFORMS + _JITTER_UNIFORMS)
    if spec.cutout:
        im = cutout(im, spec.image_size // 4, u[0], u[1], spec.fill)
    s = _flip_and_jitter(_hwc_view(im), u[2:], spec.image_size // 8, spec.fill, spec.flip)
    return (s, ops) if return_ops else s


def _hwc_view(im: Image.Image) -> np.ndarray:
    a = np.asarray(im)
    return a[:, :, None] if a.ndim == 2 else a


# ---------------------------------------------------------------------------------------------
# ImageNet-style pieces
# ---------------------------------------------------------------------------------------------

_CROP_ATTEMPTS = 10
_CROP_UNIFORMS = 4 * _CROP_ATTEMPTS + 1  # (aspect, height, row, column) per attempt + weak flip


def _center_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    crop = int((224 / (224 + 32)) * float(np.float32(min(height, width))))
    crop = max(crop, 1)
    top, left = ((height - crop) + 1) // 2, ((width - crop) + 1) // 2
    return (left, top, left + crop, top + crop)


def _sample_crop_box(width: int, height: int, u) -> tuple[int, int, int, int]:
    """tf.image.sample_distorted_bounding_box(area 0.08..1, aspect 3/4..4/3, min_object_covered
    0.1, 10 attempts) on the whole image, then the authors' fallback: if no crop was found (or the
    crop is the whole image) use the eval centre crop.  Returns a PIL box (l, t, r, b)."""
    total = float(width * height)
    min_area, max_area = 0.08 * total, 1.0 * total
    for k in range(_CROP_ATTEMPTS):
        ua, uh, uy, ux = u[4 * k:4 * k + 4]
        aspect = 0.75 + ua * (4.0 / 3.0 - 0.75)
        h = round(math.sqrt(min_area / aspect))
        max_h = round(math.sqrt(max_area / aspect))
        if round(max_h * aspect) > width:
            max_h = int((width + 0.5 - 1e-7) / aspect)
            if round(max_h * aspect) > width:
                max_h -= 1
        max_h = min(max_h, height)
        h = min(h, max_h)
        if h < max_h:
            h += int(uh * (max_h - h + 1))
        w = round(h * aspect)
        area = float(w * h)
        if area < min_area:
            h += 1
            w = round(h * aspect)
            area = float(w * h)
        if area > max_area:
            h -= 1
            w = round(h * aspect)
            area = float(w * h)
        if area < min_area or area > max_area or w > width or h > height or w <= 0 or h <= 0:
            continue
        if area < 0.1 * total or area < 1.0:  # min_object_covered=0.1 of the whole-image box
            continue
        y = int(uy * (height - h)) if h < height else 0
        x = int(ux * (width - w)) if w < width else 0
        if w == width and h == height:
            break  # the authors treat "crop == image" as a failed sample -> centre crop
        return (x, y, x + w, y + h)
    return _center_crop_box(width, height)


def _imagenet_crop(img, spec: AugmentSpec, rng: np.random.Generator) -> tuple[Image.Image, float]:
    im = _as_pil(img)
    u = rng.random(_CROP_UNIFORMS)
    box = _sample_crop_box(im.size[0], im.size[1], u)
    return _resize(im, spec.image_size, box), float(u[-1])


def _maybe_flip(im: Image.Image, u: float, spec: AugmentSpec) -> Image.Image:
    if spec.flip and u < 0.5:
        return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return im


# ---------------------------------------------------------------------------------------------
# Public views
# ---------------------------------------------------------------------------------------------

def _identity(img) -> np.ndarray:
    """kind="none": images are returned as HxWxC copies; anything else (vectors) unchanged."""
    if isinstance(img, Image.Image):
        return _owned(_as_hwc(img))
    a = np.asarray(img)
    if a.dtype == np.uint8 and a.ndim in (2, 3):
        return _owned(_as_hwc(a))
    return np.array(a, copy=True)


def weak(img, spec: AugmentSpec, rng: np.random.Generator) -> np.ndarray:
    """The weak view (labelled images, unlabelled "original" view)."""
    if spec.kind == "none":
        return _identity(img)
    if spec.kind == "cifar":
        return _cifar_weak(img, spec, rng)
    crop, u_flip = _imagenet_crop(img, spec, rng)
    return _from_pil(_maybe_flip(crop, u_flip, spec))


def strong(img, spec: AugmentSpec, rng: np.random.Generator, *, return_ops: bool = False):
    """The strong view. With `return_ops`, also the RandAugment plan [(op, applied?), ...]."""
    if spec.kind == "none":
        out = _identity(img)
        return (out, []) if return_ops else out
    if spec.kind == "cifar":
        return _cifar_strong_from_weak(_cifar_weak(img, spec, rng), spec, rng, return_ops)
    crop, _ = _imagenet_crop(img, spec, rng)  # the weak view's flip uniform is drawn and unused
    im = _maybe_flip(crop, float(rng.random()), spec)
    im, ops = rand_augment(im, spec, rng, return_ops=True)
    out = _from_pil(im)
    return (out, ops) if return_ops else out


def weak_and_strong(img, spec: AugmentSpec, rng: np.random.Generator, *, return_ops: bool = False):
    """Both views of one unlabelled image, correlated as in the authors' pipeline.

    cifar: the strong view is derived from the weak view; imagenet: both share one crop and get
    independent flips.  The result equals (weak(x, g1), strong(x, g2)) for two generators g1, g2
    in the same state as `rng`."""
    if spec.kind == "none":
        w = _identity(img)
        out = (w, w.copy())
        return (*out, []) if return_ops else out
    if spec.kind == "cifar":
        w = _cifar_weak(img, spec, rng)
        s, ops = _cifar_strong_from_weak(w, spec, rng, return_ops=True)
        return (w, s, ops) if return_ops else (w, s)
    crop, u_flip = _imagenet_crop(img, spec, rng)
    w = _from_pil(_maybe_flip(crop, u_flip, spec))
    im = _maybe_flip(crop, float(rng.random()), spec)
    im, ops = rand_augment(im, spec, rng, return_ops=True)
    s = _from_pil(im)
    return (w, s, ops) if return_ops else (w, s)


def draws(spec: AugmentSpec, views: str) -> int:
    """Uniforms that `weak` ("labeled") or `weak_and_strong` ("unlabeled") draws per image: fixed, so
    a batch's randomness can be drawn as one block (data/sample_random.py)."""
    if spec.kind == "none":
        return 0
    weak_draws = _JITTER_UNIFORMS if spec.kind == "cifar" else _CROP_UNIFORMS
    if views == "labeled":
        return weak_draws
    randaugment = 1 + UNIFORMS_PER_LAYER * int(spec.num_layers)
    if spec.kind == "cifar":
        return weak_draws + randaugment + _CUTOUT_UNIFORMS + _JITTER_UNIFORMS
    return weak_draws + 1 + randaugment  # imagenet: the strong view's own flip


def eval_view(img, spec: AugmentSpec) -> np.ndarray:
    """Deterministic evaluation view."""
    if spec.kind == "none":
        return _identity(img)
    if spec.kind == "cifar":
        return _owned(_cifar_input(img, spec.image_size))
    im = _as_pil(img)
    return _from_pil(_resize(im, spec.image_size, _center_crop_box(*im.size)))


def to_float_batch(batch_uint8, mean: Sequence[float], std: Sequence[float], channels_last: bool = False):
    """NHWC (or NHW) uint8 tensor -> NCHW float32 `(x/255 - mean) / std` on the tensor's device.

    `mean`/`std` are in 0..1 units, one value per channel or a single value for all channels.
    With `channels_last` the result has channels-last strides, which is the NHWC layout the bytes
    already have: the only copy is the conversion to float (the NCHW result is one transpose)."""
    import torch  # workers and `mpl --help` must not pay for torch at import time

    x = torch.as_tensor(batch_uint8)
    if x.dtype != torch.uint8:
        raise TypeError(f"to_float_batch expects a uint8 batch, got {x.dtype}")
    if x.dim() == 3:
        x = x.unsqueeze(-1)
    if x.dim() != 4:
        raise ValueError(f"to_float_batch expects NHWC or NHW, got shape {tuple(x.shape)}")
    channels = x.shape[-1]
    mean_l = [float(v) for v in mean]
    std_l = [float(v) for v in std]
    for name, values in (("mean", mean_l), ("std", std_l)):
        if len(values) not in (1, channels):
            raise ValueError(f"{name} has {len(values)} values for a {channels}-channel batch")
    if any(v == 0.0 for v in std_l):
        raise ValueError("std must be non-zero")
    mean_t = torch.tensor(mean_l, dtype=torch.float32).view(1, -1, 1, 1).to(x.device)
    inv_std_t = torch.tensor([1.0 / v for v in std_l], dtype=torch.float32).view(1, -1, 1, 1).to(x.device)
    nchw = x.permute(0, 3, 1, 2)  # a view: channels-last strides when x is a dense NHWC batch
    if channels_last and nchw.is_contiguous(memory_format=torch.channels_last):
        x = nchw.to(torch.float32, memory_format=torch.preserve_format)
    else:
        x = nchw.to(torch.float32, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return x.div_(255.0).sub_(mean_t).mul_(inv_std_t)
