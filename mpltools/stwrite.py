"""Write safetensors files with deterministic bytes, the user's permissions and errors naming the file.

`safetensors.torch.save_file` stores the metadata from a Rust hash map, so its key order (and the
file's sha256) changes from run to run, and it replaces the target file, dropping the permissions
`atomic_file` gave it. Here the library builds the bytes (`safetensors.torch.save`), the header is
re-serialised with sorted keys, and the bytes are written into the existing file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors.torch import save

from mpltools.atomic import DISK_ERRORS, write_error


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors encoding of `tensors` with a header whose keys (and metadata keys) are sorted."""
    raw = save(tensors, metadata=metadata)
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned, as the library writes it
    return struct.pack("<Q", len(text)) + text + raw[8 + size :]


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write (truncating in place, so an existing file keeps its mode) and raise MplError on a write failure."""
    data = safetensors_bytes(tensors, metadata)
    try:
        with open(path, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        if exc.errno in DISK_ERRORS:
            raise write_error(Path(path), exc) from None
        raise
