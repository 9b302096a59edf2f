"""Fuzz the hand-written tar reader (tarindex.scan_members, shards.index_shard) against Python's tarfile.

Real small shards (as `ShardWriter` writes them) are mutated with a fixed seed: truncation at many
offsets, flipped header bytes (checksum and size fields included), bad sizes, odd member names and
random bytes. For every case the reader must either agree with `tarfile` (same members, same bytes)
or raise the project's ShardError naming the file (NotPlain hands the shard to tarfile, also fine);
never hang, never raise anything else, never seek before the start of the file.
"""

from __future__ import annotations

import io
import random
import signal
import tarfile

from mpltools.data.shards import index_shard
from mpltools.data.tarindex import BLOCK, NotPlain, ShardError, check_end, end_of_archive, member_bytes, scan_members


def shard(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    body = b"".join(
        member_bytes(
            f"s{i:04d}.{ext}", rng.randbytes(rng.choice([0, 1, 511, 512, 513, 1500])) if ext == "png" else b"%d" % (i % 3)
        )
        for i in range(n)
        for ext in ("png", "cls")
    )
    return body + end_of_archive(len(body))


class Guarded(io.BytesIO):
    def seek(self, offset, whence=0):
        pos = super().seek(offset, whence)
        assert pos >= 0
        return pos


def reference(data: bytes):
    """tarfile's members and bytes, or None where tarfile fails or stops before a non-zero block (check_end)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            out = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
            end = tar.offset
    except (tarfile.TarError, EOFError, ValueError, UnicodeDecodeError):
        return None
    block = data[end : end + BLOCK]
    return out if len(block) == BLOCK and block.count(0) == BLOCK else None


def mutations(rng: random.Random):
    for n in (1, 3, 6):
        base = shard(n, rng.randrange(1000))
        yield "intact", base
        for cut in sorted(rng.sample(range(len(base)), 25)):
            yield f"truncate@{cut}", base[:cut]
        headers = [i for i in range(0, len(base) - BLOCK, BLOCK) if base[i + 257 : i + 262] == b"ustar"]
        for _ in range(40):
            h = rng.choice(headers)
            pos = h + rng.choice([rng.randrange(BLOCK), *range(124, 136), *range(148, 156), 156, 0, 99])
            data = bytearray(base)
            data[pos] ^= 1 << rng.randrange(8)
            yield f"flip@{pos}", bytes(data)
        for _ in range(20):
            h = rng.choice(headers)
            size = rng.choice([b"77777777777", b"00000001000", b"-1000000000", b"9" * 11, b"\x80" + b"\0" * 10, b" " * 11])
            data = bytearray(base)
            data[h + 124 : h + 135] = size
            yield f"size={size!r}", bytes(data)
        for name in (b"../x.png", b"a/b.png", b"noext", b"\xff\xfe.png", b"", b"x" * 100, b".cls"):
            data = bytearray(base)
            data[headers[0] : headers[0] + 100] = name.ljust(100, b"\0")[:100]
            yield f"name={name[:12]!r}", bytes(data)
        for _ in range(15):
            data = bytearray(base)
            start = rng.randrange(len(base))
            chunk = rng.randbytes(rng.randrange(1, 700))
            data[start : start + len(chunk)] = chunk
            yield f"random@{start}", bytes(data)


def alarm(*_):
    raise TimeoutError("the reader hangs")


def test_fuzzed_shards_agree_with_tarfile_or_raise_shard_error(tmp_path):
    signal.signal(signal.SIGALRM, alarm)
    cases = list(mutations(random.Random(9)))
    assert len(cases) >= 250
    path = tmp_path / "shard.tar"
    agreed = 0
    try:
        for label, data in cases:
            ref = reference(data)
            signal.alarm(5)
            try:
                fh = Guarded(data)
                got = scan_members(fh, path, read_suffix="")
                check_end(fh, got[-1][2] if got else 0, path)
            except NotPlain:
                pass
            except ShardError as exc:
                assert str(path) in str(exc), (label, str(exc))
            else:
                assert ref is not None, f"{label}: scan_members accepted what tarfile rejects"
                assert [(n, p) for n, _, _, p in got] == ref, label
                agreed += 1
            path.write_bytes(data)
            try:
                index = index_shard(path)
            except ShardError as exc:
                assert str(path) in str(exc), (label, str(exc))
            else:
                if index is not None:
                    assert ref is not None, f"{label}: index_shard accepted what tarfile rejects"
                    assert index.keys == list(dict.fromkeys(n.partition(".")[0] for n, _ in ref)), label
            signal.alarm(0)
    finally:
        signal.alarm(0)
    assert agreed >= 2
