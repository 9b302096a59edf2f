"""Tar members at the byte level: fast header scanning and writing, with strict end checks.

`tarfile` costs tens of microseconds per member to parse or build a 512-byte header, and it stops
silently (as if the archive had ended) at a truncated or corrupt header. Shards hold hundreds of
thousands of small members, so `shards.py` writes members with `member_bytes` and indexes shards
with `scan_members`, and every reader calls `check_end` after its last member.

`scan_members` reads plain ustar regular-file headers only. Anything else (pax or GNU long-name
headers, as `webdataset.TarWriter` writes; links; folders; the ustar prefix field) raises
`NotPlain`, and the caller falls back to `tarfile`.
"""

from __future__ import annotations

import tarfile
from typing import BinaryIO, Callable, Iterator

import numpy as np

from mpltools.errors import MplError

BLOCK = 512
RECORD = 20 * BLOCK  # tarfile pads an archive to a multiple of this
_CHECK_EVERY = 4096  # header checksums are verified in vectorised batches of this many


class ShardError(MplError):
    """A shard set is unreadable or inconsistent; the message names the file and key."""


class NotPlain(Exception):
    """The shard uses tar features that `scan_members` leaves to `tarfile`."""


def member_bytes(name: str, payload: bytes) -> bytes:
    """One tar member (header, data, padding) exactly as `tarfile` writes it in USTAR format."""
    info = tarfile.TarInfo(name)
    # Fixed metadata so the same samples always give byte-identical shards.
    info.size, info.mtime, info.mode = len(payload), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    try:
        header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    except ValueError as exc:
        raise ShardError(f"cannot store member {name!r} in a tar shard ({exc}); sample keys must be shorter.") from None
    return header + payload + bytes(-len(payload) % BLOCK)


def end_of_archive(offset: int) -> bytes:
    """What `tarfile` appends when it closes an archive whose members end at `offset`."""
    end = offset + 2 * BLOCK
    return bytes(2 * BLOCK + (-end % RECORD))


def check_end(fh: BinaryIO, offset: int, path: object) -> None:
    """Raise unless an end-of-archive block (all zeros) is at `offset`, where reading stopped."""
    fh.seek(offset)
    block = fh.read(BLOCK)
    if len(block) < BLOCK or block.count(0) != BLOCK:
        raise ShardError(f"{path} is truncated or corrupt at byte {offset:,}: neither a valid tar header nor the "
                         "end-of-archive marker is there; re-create or re-download the shard.")


def _octal(field: bytes) -> int:
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _verify_checksums(headers: list[bytes], stored: list[int], first_offset: list[int], path: object) -> None:
    rows = np.frombuffer(b"".join(headers), np.uint8).reshape(-1, BLOCK)
    # The checksum counts its own 8-byte field as spaces (8 * 32).
    computed = rows.sum(1, dtype=np.int64) - rows[:, 148:156].sum(1, dtype=np.int64) + 256
    bad = np.flatnonzero(computed != np.asarray(stored, np.int64))
    if bad.size:
        raise ShardError(f"{path}: the tar header at byte {first_offset[bad[0]]:,} has a wrong checksum; "
                         "the shard is corrupt, re-create or re-download it.")


def scan_members(fh: BinaryIO, path: object, read: Callable[[str], bool]) -> Iterator[tuple[str, int, int, bytes | None]]:
    """Yield (name, start, end, payload) per member from the start of `fh`; the payload only where read(name).

    `start` is the offset of the member's header and `end` the offset after its padded data. Raises
    ShardError for a truncated or corrupt archive, NotPlain for headers left to `tarfile`.
    """
    offset = 0
    headers: list[bytes] = []
    stored: list[int] = []
    offsets: list[int] = []
    while True:
        header = fh.read(BLOCK)
        if len(header) == BLOCK and header.count(0) == BLOCK:
            break
        if len(header) < BLOCK:
            raise ShardError(f"{path} is truncated at byte {offset:,} (it ends inside or right after a member, "
                             "without the end-of-archive marker); re-create or re-download the shard.")
        if header[156] not in (0x30, 0) or header[257:262] != b"ustar" or header[345] or header[124] & 0x80:
            raise NotPlain(path)
        try:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8")
            size = _octal(header[124:136])
            stored.append(_octal(header[148:156]))
        except (UnicodeDecodeError, ValueError):
            raise ShardError(f"{path}: the tar header at byte {offset:,} is corrupt; re-create or re-download the shard.") from None
        headers.append(header)
        offsets.append(offset)
        if len(headers) >= _CHECK_EVERY:
            _verify_checksums(headers, stored, offsets, path)
            headers, stored, offsets = [], [], []
        padded = size + (-size % BLOCK)
        payload = None
        if read(name):
            payload = fh.read(padded)[:size]
            if len(payload) < size:
                raise ShardError(f"{path} is truncated inside member {name!r}; re-create or re-download the shard.")
        else:
            fh.seek(padded, 1)  # a seek past the end shows up as a short read of the next header
        yield name, offset, offset + BLOCK + padded, payload
        offset += BLOCK + padded
    if headers:
        _verify_checksums(headers, stored, offsets, path)
