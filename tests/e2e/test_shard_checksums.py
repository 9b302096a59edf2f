"""`mpl eval` and `mpl train` check each shard's sha256 from the manifest while streaming it."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest

from tests.e2e.helpers import DIGITS_SPLIT, digits_split, mpl, sets

DIGITS = "recipes/tiny/digits.toml"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sums")
    (root / "recipes/tiny").mkdir(parents=True)
    (root / DIGITS).write_text((Path(__file__).parents[2] / DIGITS).read_text())
    digits_split(root)
    mpl("train", DIGITS, "--out", "r", "--set", "schedule.steps=2", *DIGITS_SPLIT, cwd=root)
    return root


def corrupt_one_pixel(folder: Path) -> Path:
    """Flip one byte of the last sample's image payload (for a PNG: its IEND chunk's CRC, which decoders do not
    read): the tar stays valid and the image still decodes, so only the checksum can notice."""
    shard = sorted(folder.glob("*.tar"))[-1]
    with tarfile.open(shard) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith((".npy", ".png"))][-1]
    raw = bytearray(shard.read_bytes())
    raw[member.offset_data + member.size - 1] ^= 0x01
    shard.write_bytes(bytes(raw))
    with tarfile.open(shard) as tar:
        assert len(tar.getmembers()) > 0
    return shard


def test_eval_and_train_name_a_shard_whose_checksum_does_not_match(work):
    ok = mpl("eval", "r/student.safetensors", "--data", "d/split/val", "--json", cwd=work)
    assert ok.returncode == 0
    shutil.copytree(work / "d/split/val", work / "badval")
    shard = corrupt_one_pixel(work / "badval")
    r = mpl("eval", "r/student.safetensors", "--data", "badval", cwd=work, check=False)
    assert r.returncode == 1 and shard.name in r.stderr and "sha256" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    shutil.copytree(work / "d/split/labeled", work / "badlab")
    shard = corrupt_one_pixel(work / "badlab")
    data = sets("data.labeled=badlab", "data.unlabeled=d/split/unlabeled", "data.val=d/split/val")
    r = mpl("train", DIGITS, "--out", "r2", "--set", "schedule.steps=2", *data, cwd=work, check=False)
    assert r.returncode == 1 and shard.name in r.stderr and "sha256" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (work / "r2/student.safetensors").exists()
