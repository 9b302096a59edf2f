"""What `Model.predict` accepts, turned into a batch of model inputs exactly as `mpl eval` prepares a shard set.

Accepted, for an image checkpoint of input H x W x C:
- a PIL image, converted to the checkpoint's channels ("L" for C = 1, "RGB" for C = 3, as decoding a shard does);
- uint8 image data (numpy array or tensor): H x W (grey), H x W x C, or a batch N x H x W x C;
- float model inputs (tensor or numpy array), already normalised: C x H x W or N x C x H x W;
- a non-empty list or tuple of any of these.
Sizes follow `mpl eval`'s rule (`checkpoint.check_compatible`): an `imagenet`-augmented checkpoint takes any size
(resized and centre-cropped by its eval view); any other must get the size it was trained on (resize the image
first). A vector checkpoint (input D) takes float vectors D or N x D. Anything else raises MplError (exit code 2)
naming what was given and what is expected, never a bare RuntimeError from inside the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpltools.checkpoint import CheckpointMeta
from mpltools.data import transforms
from mpltools.data.loaders import to_model_input
from mpltools.errors import MplError


class InputError(MplError):
    def __init__(self, message: str):
        super().__init__(f"predict: {message}", exit_code=2)


def expected(meta: CheckpointMeta) -> str:
    """The input spec in words, for error messages."""
    shape = list(meta.input_shape)
    if meta.input_spec.get("kind") == "vector":
        return f"float vectors of length {shape[0]} (shape [{shape[0]}] or [N, {shape[0]}])"
    c = shape[0]
    size = "any size (resized and centre-cropped)" if _any_size(meta) else "x".join(map(str, _image_hw(meta)))
    return (
        f"a PIL image or uint8 image data HxWx{c} of {size}, or float model inputs of shape {shape} or "
        f"[N, {', '.join(map(str, shape))}] (already normalised)"
    )


def _any_size(meta: CheckpointMeta) -> bool:
    return meta.augment.get("kind") == "imagenet"


def _image_hw(meta: CheckpointMeta) -> tuple[int, int]:
    spec_shape = meta.input_spec.get("shape")
    if spec_shape and meta.augment.get("kind") != "imagenet":
        return int(spec_shape[0]), int(spec_shape[1])
    return int(meta.input_shape[1]), int(meta.input_shape[2])


def to_batch(x: Any, meta: CheckpointMeta, device: torch.device) -> torch.Tensor:
    """Model inputs (N, ...) on `device` for any accepted `x` (see the module docstring)."""
    items = list(x) if isinstance(x, (list, tuple)) else [x]
    if not items:
        raise InputError(f"got an empty {type(x).__name__}; expected {expected(meta)}.")
    parts = [_one(item, meta, device) for item in items]
    return (torch.cat(parts) if len(parts) > 1 else parts[0]).to(device)


def _one(x: Any, meta: CheckpointMeta, device: torch.device) -> torch.Tensor:
    from PIL import Image

    if isinstance(x, Image.Image):
        return _images([_from_pil(x, meta)], meta, device)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point():
            return _floats(x.float(), meta)
        x = x.numpy()
    if isinstance(x, (str, Path)):
        raise InputError(
            f"got a {type(x).__name__} ({str(x)!r}); open an image file first with PIL.Image.open(path); "
            f"expected {expected(meta)}."
        )
    a = np.asarray(x) if isinstance(x, (np.ndarray, int, float, np.number)) else None
    if a is None:
        raise InputError(f"got a {type(x).__name__}; expected {expected(meta)}.")
    if np.issubdtype(a.dtype, np.floating):
        return _floats(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), meta)
    if a.dtype != np.uint8 or meta.input_spec.get("kind") == "vector":
        raise InputError(f"got {a.dtype} data of shape {list(a.shape)}; expected {expected(meta)}.")
    return _images(_split_uint8(a, meta), meta, device)


def _floats(t: torch.Tensor, meta: CheckpointMeta) -> torch.Tensor:
    shape = list(meta.input_shape)
    if list(t.shape) == shape:
        return t.unsqueeze(0)
    if t.dim() == len(shape) + 1 and list(t.shape[1:]) == shape and t.shape[0] > 0:
        return t
    hint = ""
    if len(shape) == 3 and t.dim() in (3, 4) and t.shape[-1] == shape[0]:
        hint = " (channels last? float inputs are channels first: use x.permute(0, 3, 1, 2) or pass uint8 HxWxC images)"
    raise InputError(f"got float data of shape {list(t.shape)}{hint}; expected {expected(meta)}.")


def _from_pil(img, meta: CheckpointMeta) -> np.ndarray:
    if meta.input_spec.get("kind") == "vector":
        raise InputError(f"got a PIL image but this checkpoint takes {expected(meta)}.")
    mode = "L" if meta.input_shape[0] == 1 else "RGB"
    a = np.asarray(img if img.mode == mode else img.convert(mode))
    return a[:, :, None] if a.ndim == 2 else a


def _split_uint8(a: np.ndarray, meta: CheckpointMeta) -> list[np.ndarray]:
    c = meta.input_shape[0]
    if a.ndim == 2 and c == 1:
        return [a[:, :, None]]
    if a.ndim == 3 and a.shape[-1] == c:
        return [a]
    if a.ndim == 3 and c == 1 and not _any_size(meta) and tuple(a.shape[1:]) == _image_hw(meta):
        return [img[:, :, None] for img in a]  # N x H x W grey
    if a.ndim == 4 and a.shape[-1] == c and a.shape[0] > 0:
        return list(a)
    hint = " (channels first? uint8 images are HxWxC: use a.transpose(1, 2, 0))" if a.ndim in (3, 4) and a.shape[-3] == c else ""
    raise InputError(f"got uint8 data of shape {list(a.shape)}{hint}; expected {expected(meta)}.")


def _images(images: list[np.ndarray], meta: CheckpointMeta, device: torch.device) -> torch.Tensor:
    c = meta.input_shape[0]
    for img in images:
        if img.shape[-1] != c:
            raise InputError(f"got an image with {img.shape[-1]} channels; expected {expected(meta)}.")
        if not _any_size(meta) and tuple(img.shape[:2]) != _image_hw(meta):
            h, w = _image_hw(meta)
            raise InputError(
                f"got an image of {img.shape[0]}x{img.shape[1]} pixels but this checkpoint was trained on "
                f"{h}x{w} (as `mpl eval`, predict does not resize it): resize it first, e.g. "
                f"img.resize(({w}, {h})); expected {expected(meta)}."
            )
    spec, norm = meta.eval_view()
    views = np.stack([transforms.eval_view(img, spec) for img in images])
    return to_model_input(torch.from_numpy(views), norm, device)
