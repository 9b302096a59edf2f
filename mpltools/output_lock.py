"""One writer per output (DESIGN §2): an advisory lock beside each output while a command writes it.

`locked(out)` takes an exclusive `fcntl.flock` on `.NAME.lock` in the output's folder before the command writes
anything there, and keeps it until the command is done with `out`. A second command that would write the same
output is refused at once (exit 1) with the first one's process id and command line, which the lock file holds.
The kernel drops a flock when its holder dies, so a crashed or killed (SIGKILL) writer never blocks the next
one; a lock file it leaves is taken over. The lock file is removed when the lock is released.

The parent folders the lock file needs are created, and removed again (when still empty) on release, so a
command that fails before writing leaves no folder behind. Re-entering the lock on the same output from the
same process (a run folder's own files) is a no-op.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mpltools import signals
from mpltools.errors import MplError

_holder = {"command": None}  # this process's command line, as `mpl ...` (set by the CLI)
_held: set[str] = set()  # the lock files this process holds


def describe_holder(command: str) -> None:
    """Name the command this process runs, for the lock files it writes."""
    _holder["command"] = command


def lock_path(out: Path) -> Path:
    out = Path(os.path.abspath(out))
    return out.parent / f".{out.name}.lock"


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold the lock of `out` for the block; raise MplError (exit 1) if another process holds it."""
    path = lock_path(out)
    key = os.fsdecode(path)
    if key in _held:
        yield
        return
    made, fd = missing_folders(path.parent), None
    try:
        with signals.deferred():  # a signal between taking the lock and the `try` would leave the lock file
            fd = _acquire(path, out)
            _held.add(key)
        yield
    finally:
        with signals.deferred():  # nor may one cut the release short
            if fd is not None:
                _held.discard(key)
                try:
                    path.unlink(missing_ok=True)  # before the unlock: a process that opened it finds it gone and retries
                except OSError:
                    pass
                os.close(fd)
            remove_empty(made)


def missing_folders(folder: Path) -> list[Path]:
    """The folders of `folder`'s path that do not exist yet, deepest first (what `mkdir -p` would create)."""
    folder, missing = Path(folder).absolute(), []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove the given folders, deepest first, while they are empty (a folder someone else filled stays)."""
    for folder in folders:
        if not folder.exists():
            continue
        try:
            os.rmdir(folder)
        except OSError:
            return


def _acquire(path: Path, out: Path) -> int:
    """Open, flock and fill in the lock file; retry when the file was replaced between the open and the flock."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(out, exc) from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise unwritable(out, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise unwritable(out, exc) from None
            raise MplError(
                f"{out} is being written by another process ({_describe(path)}); wait for it to finish, or choose "
                "another --out. (The lock is released when that process exits, even if it is killed.)"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed it as we opened it: take the new one
    info = {
        "pid": os.getpid(),
        "command": _holder["command"] or shlex.join(sys.argv),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(info) + "\n").encode("utf-8", "surrogateescape"))
    return fd


def _describe(path: Path) -> str:
    """`pid 123 on host: mpl train ... (since ...)`, from the lock file (or what can be said without it)."""
    for _ in range(20):  # the holder writes its details right after taking the lock
        try:
            info = json.loads(path.read_bytes().decode("utf-8", "replace"))
            return f"pid {info['pid']} on {info['host']}: {info['command']}, since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return f"see {path}"


def unwritable(out: Path, exc: OSError) -> MplError:
    """An output whose folder cannot be written (read-only, not a folder, no permission), naming `--out`."""
    why = {
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOTDIR: "a part of its path is a file, not a folder",
        errno.EEXIST: "a part of its path is a file, not a folder",
    }.get(exc.errno, exc.strerror or str(exc))
    return MplError(f"cannot write {out} ({why}); choose another --out.")
