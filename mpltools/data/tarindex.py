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
from typing import BinaryIO

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
    digits = field.split(b"\0", 1)[0].strip()
    if digits.strip(b"01234567"):
        raise ValueError(f"not an octal number: {field!r}")  # int() would accept a sign or '_'
    return int(digits or b"0", 8)


_POWERS = 8 ** np.arange(5, -1, -1, dtype=np.int64)


def _verify_checksums(headers: list[bytes], offsets: list[int], path: object) -> None:
    rows = np.frombuffer(b"".join(headers), np.uint8).reshape(-1, BLOCK)
    field = rows[:, 148:156]
    # The checksum counts its own 8-byte field as spaces (8 * 32).
    computed = rows.sum(1, dtype=np.int64) - field.sum(1, dtype=np.int64) + 256
    # Stored as six octal digits and NUL or space (tarfile, GNU tar); anything else is parsed one by one.
    digits = field[:, :6].astype(np.int64) - 48
    plain = ((digits >= 0) & (digits < 8)).all(1) & np.isin(field[:, 6], (0, 32))
    stored = (digits * _POWERS).sum(1)
    for i in np.flatnonzero(~plain):
        try:
            stored[i] = _octal(headers[i][148:156])
        except ValueError:
            stored[i] = -1
    bad = np.flatnonzero(computed != stored)
    if bad.size:
        raise ShardError(f"{path}: the tar header at byte {offsets[bad[0]]:,} has a wrong checksum; "
                         "the shard is corrupt, re-create or re-download it.")


def scan_members(fh: BinaryIO, path: object, read_suffix: str) -> list[tuple[str, int, int, bytes | None]]:
    """(name, start, end, payload) of every member from the start of `fh`; the payload only for names
    ending with `read_suffix`.

    `start` is the offset of the member's header and `end` the offset after its padded data. Raises
    ShardError for a truncated or corrupt archive (every header checksum is verified before this
    returns), NotPlain for headers left to `tarfile`.
    """
    members: list[tuple[str, int, int, bytes | None]] = []
    offset = 0
    headers: list[bytes] = []
    offsets: list[int] = []
    read, seek = fh.read, fh.seek
    while True:
        header = read(BLOCK)
        if len(header) < BLOCK:
            if offset == 0:
                raise ShardError(f"{path} is not a tar shard: it is empty or shorter than one tar header.")
            raise ShardError(f"{path} is truncated at byte {offset:,} (it ends inside or right after a member, "
                             "without the end-of-archive marker); re-create or re-download the shard.")
        if header[156] not in (0x30, 0) or header[257:262] != b"ustar" or header[345] or header[124] & 0x80:
            if header.count(0) == BLOCK:
                break  # the end-of-archive marker
            raise NotPlain(path)
        try:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8")
            size = _octal(header[124:136])
        except (UnicodeDecodeError, ValueError):
            raise ShardError(f"{path}: the tar header at byte {offset:,} is corrupt; re-create or re-download the shard.") from None
        headers.append(header)
        offsets.append(offset)
        if len(headers) >= _CHECK_EVERY:
            _verify_checksums(headers, offsets, path)
            headers, offsets = [], []
        padded = size + (-size % BLOCK)
        payload = None
        if name.endswith(read_suffix):
            payload = read(padded)[:size]
            if len(payload) < size:
                raise ShardError(f"{path} is truncated inside member {name!r}; re-create or re-download the shard.")
        else:
            seek(padded, 1)  # a seek past the end shows up as a short read of the next header
        end = offset + BLOCK + padded
        members.append((name, offset, end, payload))
        offset = end
    if headers:
        _verify_checksums(headers, offsets, path)
    return members
