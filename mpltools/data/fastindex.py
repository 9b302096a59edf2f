"""The header index of a well-formed plain-ustar shard, with the per-member work done by numpy.

`shards.index_shard` walks a shard member by member in Python, checking each header, name and
label as it goes: about 10 us per member, the largest cost of `mpl data split` (benchmarks/README.md).
`index_plain` does the part that must be sequential (following each header's size to the next
header, through a memory map: only header pages are read) in a tight loop, then checks every
header, name and sample at once: header type, ustar magic and checksum, `<key>.<ext>` names,
samples made of consecutive members with unique keys, one input each, no member twice, integer
labels in range. It accepts only what the sequential reader accepts; at the first sign of
anything else (a bad header, a bad sample, tar features it leaves to `tarfile`) it returns None
and `index_shard` runs its sequential reader, which raises the error that names the problem (or
hands the shard to `tarfile`). So errors and their messages are exactly the sequential reader's.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from mpltools.data.format import INPUT_EXTENSIONS
from mpltools.data.tarindex import BLOCK

_INPUTS = tuple(ext.encode() for ext in INPUT_EXTENSIONS)
_EXT_MAX = 32  # longer extensions are left to the sequential reader
_POWERS = 8 ** np.arange(5, -1, -1, dtype=np.int64)
_SIZE_POWERS = 8 ** np.arange(10, -1, -1, dtype=np.int64)
_MAGIC = np.frombuffer(b"ustar\x00", np.uint8)  # magic and NUL (tarfile's USTAR); GNU's "ustar " is left to the walk
_SCAN_BELOW = 16 << 10  # first member's size below which `_scan` reads the whole shard


def index_plain(path, num_classes: int | None) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """(keys, labels, bounds) as in `shards.ShardIndex`, or None to leave the shard to the sequential reader."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 2 * BLOCK:
                return None
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                # Small members: nearly every page holds a header anyway, so read them all and find the
                # headers by their magic; large ones: visit only the header pages.
                walked = _scan(mm, size) if int(mm[124:135] or b"x", 8) < _SCAN_BELOW else None
                walked = walked or _walk(mm, size)
                if walked is None:
                    return None
                offsets, sizes, rows = walked
                if not _headers_ok(rows):
                    return None
                return _samples(mm, rows, offsets, sizes, num_classes)
    except (OSError, ValueError):
        return None


def _scan(mm: mmap.mmap, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """`_walk`'s result from the blocks that carry the ustar magic, if they form exactly the chain of
    headers (each one's size leads to the next, the last to the end-of-archive block); None otherwise
    (a payload that happens to hold the magic, anything unusual): then `_walk` follows the chain."""
    blocks = np.frombuffer(mm, np.uint8, count=(size // BLOCK) * BLOCK).reshape(-1, BLOCK)
    try:
        where = np.flatnonzero((blocks[:, 257:263] == _MAGIC).all(1))
        rows = blocks[where]  # a copy
    finally:
        del blocks  # no view of the map may outlive it
    if not len(where) or where[0] != 0:
        return None
    digits = rows[:, 124:135].astype(np.int64) - 48
    if not ((digits >= 0) & (digits < 8)).all():
        return None
    sizes = digits @ _SIZE_POWERS
    offsets = where * BLOCK
    ends = offsets + BLOCK + sizes + (-sizes % BLOCK)
    last = int(ends[-1])
    if (ends[:-1] != offsets[1:]).any() or last + BLOCK > size or mm[last:last + BLOCK] != bytes(BLOCK):
        return None
    return offsets, sizes, rows


def _walk(mm: mmap.mmap, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Offsets, sizes and headers (members x 512 uint8) of every member up to the end-of-archive
    block; None if anything is unusual."""
    offsets, sizes, headers = [], [], []
    zero = bytes(BLOCK)
    o = 0
    while True:
        if o + BLOCK > size:
            return None  # truncated: the sequential reader says where
        header = mm[o:o + BLOCK]
        if header[0] == 0:
            if header == zero:
                break
            return None
        field = header[124:135]  # 11 octal digits and a NUL, as tarfile writes USTAR sizes
        if field.strip(b"01234567"):
            return None  # a sign, space, '_' or other byte int() would accept or reject: the sequential reader decides
        n = int(field, 8)
        offsets.append(o)
        sizes.append(n)
        headers.append(header)
        o += BLOCK + n + (-n % BLOCK)
    if not offsets:
        return None
    rows = np.frombuffer(b"".join(headers), np.uint8).reshape(-1, BLOCK)
    return np.asarray(offsets, np.int64), np.asarray(sizes, np.int64), rows


def _headers_ok(rows: np.ndarray) -> bool:
    """Regular-file ustar headers without a prefix, NUL-terminated sizes, and correct checksums."""
    plain = (np.isin(rows[:, 156], (0x30, 0)) & (rows[:, 257:262] == np.frombuffer(b"ustar", np.uint8)).all(1)
             & (rows[:, 345] == 0) & (rows[:, 135] == 0))
    field = rows[:, 148:156].astype(np.int64)
    digits = field[:, :6] - 48
    stored_ok = ((digits >= 0) & (digits < 8)).all(1) & np.isin(field[:, 6], (0, 32))
    stored = (digits * _POWERS).sum(1)
    computed = rows.sum(1, dtype=np.int64) - field.sum(1) + 256  # the checksum field counts as 8 spaces
    return bool((plain & stored_ok & (stored == computed)).all())


def _samples(mm, rows: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, num_classes: int | None):
    """Group members into samples and check them, on the header bytes: names are `<key>.<ext>` (the
    first dot splits them, a NUL or the field's end terminates them), keys are compared as bytes and
    decoded once per sample."""
    m = len(offsets)
    width = 32 if (rows[:, 31] == 0).all() else 100  # short names (the usual case): a third of the bytes to look at
    field = rows[:, :width]
    position = np.arange(width)
    length = np.where((field == 0).any(1), (field == 0).argmax(1), width)
    inside = position < length[:, None]
    dots = (field == ord(".")) & inside
    dot = dots.argmax(1)
    ext_len = length - dot - 1
    if not dots.any(1).all() or (dot == 0).any() or (ext_len < 1).any() or (ext_len > _EXT_MAX).any() \
            or ((field == ord("/")) & inside).any():
        return None  # no key, no extension, a slash: the sequential reader names it
    keys_b = np.where(position < dot[:, None], field, 0).view(f"S{width}").ravel()
    take = np.minimum(dot[:, None] + 1 + np.arange(_EXT_MAX), width - 1)
    ext_bytes = np.take_along_axis(field, take, 1)
    exts = np.where(np.arange(_EXT_MAX) < ext_len[:, None], ext_bytes, 0).view(f"S{_EXT_MAX}").ravel()
    first = np.ones(m, bool)
    first[1:] = keys_b[1:] != keys_b[:-1]
    starts = np.flatnonzero(first)
    sample_of = np.cumsum(first) - 1
    try:
        keys = [k.decode("utf-8") for k in keys_b[starts].tolist()]
    except UnicodeDecodeError:
        return None
    if len(set(keys)) != len(keys):
        return None
    is_input = np.isin(exts, _INPUTS)
    if not (np.add.reduceat(is_input.astype(np.int64), starts) == 1).all():
        return None
    order = np.lexsort((exts, sample_of))
    if ((sample_of[order][1:] == sample_of[order][:-1]) & (exts[order][1:] == exts[order][:-1])).any():
        return None  # a member twice in one sample
    ends = offsets + BLOCK + sizes + (-sizes % BLOCK)
    n = len(keys)
    bounds = np.full((n, 4), -1, np.int64)
    bounds[:, 0] = offsets[starts]
    bounds[:, 1] = ends[np.append(starts[1:], m) - 1]
    labels = np.full(n, -1, np.int64)
    cls = np.flatnonzero(exts == b"cls")
    if len(cls):
        values = _labels(mm, offsets[cls], sizes[cls])
        if values is None:
            return None
        owner = sample_of[cls]
        if num_classes is not None and not ((values >= 0) & (values < num_classes)).all():
            return None
        labels[owner] = values
        bounds[owner, 2] = offsets[cls]
        bounds[owner, 3] = ends[cls]
    return keys, labels, bounds


def _labels(mm, offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray | None:
    """The integers in `cls` payloads: plain decimal digits at once, anything else as the sequential
    reader parses it (`int(payload.decode("ascii").strip())`)."""
    if (sizes >= 1).all() and (sizes <= 15).all():
        data = np.frombuffer(mm, np.uint8)
        try:
            heads = data[(offsets + BLOCK)[:, None] + np.arange(15)].astype(np.int64) - 48
        finally:
            del data  # no view of the map may outlive it
        used = np.arange(15) < sizes[:, None]
        if (((heads >= 0) & (heads < 10)) | ~used).all():
            scale = 10 ** np.maximum(sizes[:, None] - 1 - np.arange(15), 0)
            return (np.where(used, heads, 0) * scale).sum(1)
    try:
        return np.asarray([int(mm[o + BLOCK:o + BLOCK + s].decode("ascii").strip())
                           for o, s in zip(offsets.tolist(), sizes.tolist())], np.int64)
    except (UnicodeDecodeError, ValueError, OverflowError):
        return None
