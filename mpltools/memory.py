"""Running out of memory is a message that says so (exit 1), not a traceback or an abort.

Under a memory limit (`ulimit -v`, a container's address-space limit) a command can run out while it loads
PyTorch or while it works. What Python can catch arrives at the command boundary (`cli/invocation.py`) as a
MemoryError, an ImportError or OSError from a shared library that could not be mapped, or a RuntimeError from
torch's allocator; `is_out_of_memory` recognises them and `message` says what ran out and what to do. The
message is written without rich (which may itself need memory to render it).

What cannot be caught: a C++ `std::bad_alloc` thrown while libtorch's libraries initialise (the process aborts,
exit 134), and OpenBLAS giving up while numpy loads (it exits 1 with its own message). The first is avoided
where it can be: `check_before_torch` runs when `torch` is first imported (a meta-path hook that `main` installs)
and refuses to load it when the address-space limit leaves less room than its libraries alone take.
"""

from __future__ import annotations

import errno
import importlib.abc
import importlib.util
import os
import resource
import sys
from pathlib import Path

from mpltools.errors import MplError

_MB = 1 << 20
_SLACK = 48 * _MB  # what torch allocates while it initialises, besides mapping its libraries (measured: ~50 MB)
_PHRASES = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "failed to map segment",
    "bad_alloc",
    "memory allocation failed",
)


def limit() -> int | None:
    """The address-space limit (`ulimit -v`) in bytes, or None when there is none."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return True
    return isinstance(exc, (ImportError, OSError, RuntimeError)) and any(p in str(exc).lower() for p in _PHRASES)


def message(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    cause = next((line for line in lines if any(p in line.lower() for p in _PHRASES)), lines[0])
    where = f"the memory limit (ulimit -v) of {limit() // _MB:,} MB" if limit() else "the memory of this machine"
    return (
        f"ran out of memory ({cause}): the command needs more than {where}. Raise the limit, or lower what the "
        "command holds at once (the batch size, data.workers, data.prefetch_mb)."
    )


def report(exc: BaseException) -> None:
    """Write `message(exc)` to stderr with as little memory as possible."""
    try:
        sys.stderr.write(f"error: {message(exc)}\n")
        sys.stderr.flush()
    except MemoryError:
        os.write(2, b"error: ran out of memory.\n")


def _address_space_in_use() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def check_before_torch() -> None:
    """Refuse (exit 1) to load torch when the address-space limit cannot hold its shared libraries: loading them
    would end in an abort that no error handling sees."""
    cap = limit()
    if cap is None:
        return
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return
    libs = Path(list(spec.submodule_search_locations)[0]) / "lib"
    size = sum(f.stat().st_size for f in libs.glob("*.so*")) if libs.is_dir() else 0
    need = _address_space_in_use() + size + _SLACK
    if need > cap:
        raise MplError(
            f"ran out of memory: the memory limit (ulimit -v) of {cap // _MB:,} MB leaves no room to load PyTorch "
            f"(about {need // _MB:,} MB of address space, its libraries alone {size // _MB:,} MB). "
            "Raise the limit (e.g. `ulimit -v unlimited`) and run the command again."
        )


class _BeforeTorch(importlib.abc.MetaPathFinder):
    """Runs `check_before_torch` when `torch` is first imported, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            check_before_torch()
        return None


def guard_torch_import() -> None:
    """Install the check (once; nothing to do when torch is already loaded)."""
    if "torch" not in sys.modules and not any(isinstance(f, _BeforeTorch) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorch())
