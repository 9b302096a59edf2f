"""The pieces of `mpl data filter-unlabeled` that are plain numpy: image fingerprints, the near-
duplicate index, the bounded per-class top-K selection and Noisy Student's class balancing.

* `pixel_digest`: sha256 of the DECODED pixels (with dtype and shape), so the same image stored
  as PNG at two compression levels, or as PNG and lossless WebP, has one digest.
* `dhash`: a 64-bit difference hash of an 8x9 grayscale box-downscale (bit = "brighter than the
  pixel to its left"); re-encodings, small brightness changes and mild noise move few bits.
* `NearDuplicateIndex`: which reference hash lies within Hamming distance d of a query, by the
  pigeonhole principle (split 64 bits into d+1 segments: a match agrees exactly on one of them).
* `TopKPerClass`: the K best candidates of each class among any number of candidates, in memory
  bounded by K x classes (see its docstring); exact and order-independent, so partial selections
  of several processes merge into exactly the single-process selection.
"""

from __future__ import annotations

import hashlib

import numpy as np


def pixel_digest(array: np.ndarray) -> bytes:
    head = f"{array.dtype.str}:{'x'.join(map(str, array.shape))}:".encode()
    return hashlib.sha256(head + np.ascontiguousarray(array).tobytes()).digest()[:16]


def dhash(image: np.ndarray) -> int:
    """64-bit difference hash of a decoded HxWxC uint8 image."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError("perceptual hashes need decoded images (HxWxC uint8), not vectors.")
    gray = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).convert("L")
    small = np.asarray(gray.resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).reshape(-1)
    return int(np.packbits(bits).view(">u8")[0])


class NearDuplicateIndex:
    """Reference hashes; `match(h)` = the first reference within Hamming distance `distance`, or -1."""

    def __init__(self, hashes: np.ndarray, distance: int):
        self.hashes = np.asarray(hashes, dtype=np.uint64)
        self.distance = int(distance)
        parts = min(self.distance + 1, 64)
        edges = np.linspace(0, 64, parts + 1).round().astype(int)
        self.segments = [(int(lo), (1 << int(hi - lo)) - 1) for lo, hi in zip(edges[:-1], edges[1:])]
        self.tables: list[dict[int, np.ndarray]] = []
        for lo, mask in self.segments:
            values = (self.hashes >> np.uint64(lo)) & np.uint64(mask)
            order = np.argsort(values, kind="stable")
            unique, starts = np.unique(values[order], return_index=True)
            ends = np.append(starts[1:], len(order))
            self.tables.append({int(u): order[s:e] for u, s, e in zip(unique, starts, ends)})

    def match(self, h: int) -> int:
        found = [t[(h >> lo) & mask] for (lo, mask), t in zip(self.segments, self.tables) if (h >> lo) & mask in t]
        if not found:
            return -1
        candidates = np.unique(np.concatenate(found))
        near = candidates[np.bitwise_count(self.hashes[candidates] ^ np.uint64(h)) <= self.distance]
        return int(near[0]) if len(near) else -1


class TopKPerClass:
    """The `k` highest-scoring candidates of each class (`k=None`: every candidate).

    A candidate is (index, class, score[, top-n probabilities and classes]); `index` is any unique
    integer that orders candidates (the filter uses shard << 32 | position). Ties in score go to the
    smaller index, so the selection is a pure function of the candidate set: the same whatever order
    or grouping they arrive in (merging per-process selections is exact).

    Memory: candidates are appended to flat arrays that are pruned to the best k per class
    whenever they would exceed `capacity = k * num_classes + slack` records, so at most `capacity`
    records are ever held, however many candidates are added (`peak` records the maximum).
    Without k nothing can be dropped and memory grows with the candidates kept.
    """

    def __init__(self, num_classes: int, k: int | None, topn: int = 0, slack: int | None = None):
        self.num_classes, self.k, self.topn = num_classes, k, topn
        self.slack = max(1, slack if slack is not None else max(4096, (k or 0) * num_classes // 4))
        self.capacity = None if k is None else k * num_classes + self.slack
        self.size = self.peak = 0
        self._a = self._empty(0)

    def _empty(self, n: int) -> dict[str, np.ndarray]:
        return {"index": np.empty(n, np.int64), "cls": np.empty(n, np.int32), "score": np.empty(n, np.float32),
                "top_p": np.empty((n, self.topn), np.float32), "top_i": np.empty((n, self.topn), np.int32)}

    def add(self, index, cls, score, top_p=None, top_i=None) -> None:
        n = len(index)
        new = {"index": np.asarray(index, np.int64), "cls": np.asarray(cls, np.int32), "score": np.asarray(score, np.float32),
               "top_p": np.zeros((n, self.topn), np.float32) if top_p is None else np.asarray(top_p, np.float32),
               "top_i": np.zeros((n, self.topn), np.int32) if top_i is None else np.asarray(top_i, np.int32)}
        start = 0
        while start < n:
            room = n - start if self.capacity is None else self.capacity - self.size
            if room <= 0:
                self._prune()
                room = self.capacity - self.size
            take = min(n - start, room)
            self._append({k: v[start:start + take] for k, v in new.items()})
            start += take

    def _append(self, part: dict[str, np.ndarray]) -> None:
        n = len(part["index"])
        if self.size + n > len(self._a["index"]):
            grown = max(self.size + n, 2 * len(self._a["index"]), 1024)
            grown = grown if self.capacity is None else min(grown, self.capacity)
            bigger = self._empty(grown)
            for key, arr in self._a.items():
                bigger[key][: self.size] = arr[: self.size]
            self._a = bigger
        for key, arr in part.items():
            self._a[key][self.size: self.size + n] = arr
        self.size += n
        self.peak = max(self.peak, self.size)

    def _prune(self) -> None:
        if self.k is None:
            return
        a, n = self._a, self.size
        order = np.lexsort((a["index"][:n], -a["score"][:n], a["cls"][:n]))  # class, best score, smaller index
        cls = a["cls"][:n][order]
        rank = np.arange(n) - np.searchsorted(cls, cls, side="left")
        keep = np.sort(order[rank < self.k])
        for key, arr in a.items():
            arr[: len(keep)] = arr[keep]
        self.size = len(keep)

    def arrays(self) -> dict[str, np.ndarray]:
        """The selection (best k per class), sorted by index; copies, for sending to another process."""
        self._prune()
        order = np.argsort(self._a["index"][: self.size], kind="stable")
        return {key: arr[: self.size][order].copy() for key, arr in self._a.items()}

    def merge(self, arrays: dict[str, np.ndarray]) -> None:
        self.add(arrays["index"], arrays["cls"], arrays["score"], arrays["top_p"], arrays["top_i"])


def balance_occurrences(cls: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Noisy Student's upsampling: how many times to write each kept image so every class with
    kept images has exactly k. A class with n < k images: each image k // n times, and k % n of
    them (drawn with a generator seeded by (seed, class)) once more. Classes with n >= k: once."""
    occurrences = np.ones(len(cls), np.int64)
    order = np.argsort(cls, kind="stable")
    classes, starts = np.unique(cls[order], return_index=True)
    for c, members in zip(classes, np.split(order, starts[1:])):
        n = len(members)
        if n >= k:
            continue
        occurrences[members] = k // n
        extra = np.random.default_rng([seed, int(c)]).choice(n, size=k % n, replace=False)
        occurrences[members[extra]] += 1
    return occurrences
