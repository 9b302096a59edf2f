"""Shard checksums checked while a shard is streamed the first time: the bytes are hashed as they are read.

`open_shard_set` registers the manifest's sha256 of each shard. A reader opens a shard with
`open_checked`; every byte it reads (in order) feeds the hash, and `finish` hashes what is left after
the last member (the end-of-archive padding, at most one tar record) and compares. A shard read with
gaps (a process reading only its share of samples) cannot be verified that way and is left unverified;
a verified shard is not hashed again in this process.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

from mpltools.data.tarindex import ShardError

_expected: dict[str, str] = {}
_verified: set[tuple[str, str]] = set()
_names: dict[str, str] = {}  # local copy of a remote shard -> its URL, for messages


def register(paths: list[Path], checksums: list[str], names: list[str] | None = None) -> None:
    for i, (path, digest) in enumerate(zip(paths, checksums)):
        _expected[os.path.abspath(path)] = digest
        if names is not None:
            _names[os.path.abspath(path)] = names[i]


class CheckedFile:
    """A read-only binary file that hashes, in order, the bytes read from it."""

    def __init__(self, path: Path, expected: str | None, buffering: int = -1):
        self.path, self.expected = Path(path), expected
        self._fh = open(path, "rb", buffering=buffering)
        self._digest = hashlib.sha256() if expected else None
        self._hashed = 0  # bytes [0, _hashed) went into the digest

    def read(self, n: int = -1) -> bytes:
        pos = self._fh.tell()
        data = self._fh.read(n)
        if self._digest is not None:
            if pos > self._hashed:
                self._digest = None  # a gap: this read cannot verify the shard
            elif pos + len(data) > self._hashed:
                self._digest.update(memoryview(data)[self._hashed - pos:])
                self._hashed = pos + len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def fileno(self) -> int:
        return self._fh.fileno()

    def finish(self) -> None:
        """Hash the rest of the file and raise ShardError naming the shard if it does not match the manifest."""
        if self._digest is None:
            return
        self._fh.seek(self._hashed)
        while block := self._fh.read(1 << 16):
            self._digest.update(block)
        got = self._digest.hexdigest()
        self._digest = None
        if got != self.expected:
            raise ShardError(f"{_names.get(os.path.abspath(self.path), self.path)}: sha256 {got[:12]}… does not match {self.expected[:12]}… in the manifest; the shard "
                             "was modified or corrupted after it was written: re-create or re-download it.")
        _verified.add((os.path.abspath(self.path), self.expected))

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "CheckedFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_checked(path: Path, buffering: int = -1) -> BinaryIO:
    """Open a shard for sequential reading, hashing it unless it was already verified (or has no manifest)."""
    key = os.path.abspath(path)
    expected = _expected.get(key)
    if expected is not None and (key, expected) in _verified:
        expected = None
    return CheckedFile(path, expected, buffering)  # type: ignore[return-value]
