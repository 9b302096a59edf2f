"""A teacher's per-sample predictions stored as shard extras, and their way back to a distribution.

Two member formats, written by `mpl data filter-unlabeled --store-topk N` and `mpl reduced predict`:

* `teacher_logits.npy`: the full logit vector, shape (C,), float16 or float32. Softmax of it is the
  teacher's distribution (exactly the one the teacher computed, up to the storage dtype).
* `topk.npy`: the N most likely classes, most likely first, as a structured array of shape (N,)
  with fields `prob` (float32, the softmax probability) and `index` (int32, the class). Smaller
  (N of C classes) but lossy: `as_logits` rebuilds a distribution that keeps the N stored
  probabilities at their classes and spreads the remaining mass `1 - sum(prob)` evenly over the
  other C - N classes; every probability is floored at `FLOOR` (so no logit is -inf and no label
  gets an infinite loss) and the result renormalised, then returned as log-probabilities.

Pure numpy; no torch at import time.
"""

from __future__ import annotations

import io

import numpy as np

from mpltools.data.tarindex import ShardError

LOGITS = "teacher_logits.npy"
TOPK = "topk.npy"
KINDS = {LOGITS: "logits", TOPK: "topk"}
TOPK_DTYPE = np.dtype([("prob", "<f4"), ("index", "<i4")])
FLOOR = 1e-8


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def encode_logits(logits: np.ndarray, dtype: str = "float32") -> bytes:
    return _npy(np.asarray(logits, dtype=np.dtype(dtype)))


def encode_topk(probs: np.ndarray, indices: np.ndarray) -> bytes:
    out = np.empty(len(probs), TOPK_DTYPE)
    out["prob"], out["index"] = probs, indices
    return _npy(out)


def topk_rows(probs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n largest probabilities of each row, most likely first (ties: the smaller class first)."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :n]
    return np.take_along_axis(probs, order, axis=1).astype(np.float32), order.astype(np.int32)


def load(payload: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(payload), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise ShardError(f"{where}: not a valid .npy array ({exc}).") from None


def as_logits(name: str, array: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """float32 logits (C,) whose softmax is the stored distribution; ShardError naming `where` if malformed."""
    if name == LOGITS:
        if array.shape != (num_classes,) or array.dtype.kind != "f":
            raise ShardError(f"{where}: {LOGITS} must be a float vector of {num_classes} logits, got {array.dtype} {array.shape}.")
        out = array.astype(np.float32)
        if not np.isfinite(out).all():
            raise ShardError(f"{where}: {LOGITS} holds NaN or inf.")
        return out
    if name == TOPK:
        if array.dtype != TOPK_DTYPE or array.ndim != 1 or not 1 <= len(array) <= num_classes:
            raise ShardError(f"{where}: {TOPK} must be a structured array (prob float32, index int32) of 1..{num_classes} entries.")
        p, i = array["prob"].astype(np.float64), array["index"]
        if not (np.isfinite(p).all() and (p >= 0).all() and p.sum() <= 1.0 + 1e-3) or (i < 0).any() or (i >= num_classes).any() \
                or len(np.unique(i)) != len(i):
            raise ShardError(f"{where}: {TOPK} has probabilities outside [0, 1] or summing above 1, or class indices that are repeated or outside 0..{num_classes - 1}.")
        others = num_classes - len(i)
        dist = np.full(num_classes, max(1.0 - p.sum(), 0.0) / others if others else 0.0)
        dist[i] = p
        dist = np.maximum(dist, FLOOR)
        return np.log(dist / dist.sum()).astype(np.float32)
    raise ShardError(f"{where}: unknown prediction member {name!r}; expected {LOGITS} or {TOPK}.")
