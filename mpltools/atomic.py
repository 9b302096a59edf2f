"""All-or-nothing outputs (DESIGN §2): write to a temporary sibling, fsync, rename.

A reader never sees a half-written file or folder, an interrupted command (Ctrl-C, SIGTERM) leaves
nothing behind, a killed one (SIGKILL) only a hidden `.tmp-*` sibling that the next run removes,
and nothing is overwritten unless the user said `--force`. An output is locked while it is written
(`output_lock`): a second command writing the same output is refused.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mpltools import signals
from mpltools.errors import MplError
from mpltools.output_lock import locked, missing_folders, remove_empty

DISK_ERRORS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_can_write(out: Path, force: bool) -> None:
    """Refuse an existing `out` without --force, or one whose parent cannot be a folder; creates nothing."""
    out = Path(out)
    if out.exists() and not force:
        raise MplError(f"{out} already exists; pass --force to overwrite it, or choose another --out.")
    ancestor = out.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise MplError(f"cannot write {out}: {ancestor} is a file, not a folder; choose another --out.")


@contextmanager
def _parents(out: Path) -> Iterator[None]:
    """Create `out`'s missing parent folders; remove them again (only those, if still empty) when the block fails."""
    made = missing_folders(out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        remove_empty(made)
        raise


def _remove_stale_temps(out: Path) -> None:
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


@contextmanager
def atomic_dir(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `out` in one rename."""
    out = Path(out)
    check_can_write(out, force)
    with locked(out), _parents(out):
        check_can_write(out, force)  # again under the lock: another writer may have finished meanwhile
        _remove_stale_temps(out)
        with _replace_dir(out) as tmp:
            yield tmp


@contextmanager
def _replace_dir(out: Path) -> Iterator[Path]:
    tmp = None
    try:
        with signals.deferred():  # a signal right after the creation would leave the temporary folder behind
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the output gets the usual permissions
        yield tmp
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as fh:
                    os.fsync(fh.fileno())
        with signals.deferred():  # between the two renames a signal would lose both the old and the new output
            if out.exists():
                # --force: move the old output aside first so the rename below cannot fail half-way.
                trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-old-", dir=out.parent))
                os.replace(out, trash / "old")
                os.replace(tmp, out)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, out)
            fsync_dir(out.parent)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
            raise write_error(out, exc) from None
        raise


@contextmanager
def atomic_file(out: Path, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success it is fsynced and renamed to `out`."""
    out = Path(out)
    if out.exists() and not force:
        raise MplError(f"{out} already exists; pass --force to overwrite it.")
    with locked(out), _parents(out):
        if out.exists() and not force:  # another writer finished meanwhile
            raise MplError(f"{out} already exists; pass --force to overwrite it.")
        _remove_stale_temps(out)  # left by a killed writer of the same file
        with _replace_file(out) as tmp:
            yield tmp


@contextmanager
def _replace_file(out: Path) -> Iterator[Path]:
    tmp = None
    try:
        with signals.deferred():  # a signal right after the creation would leave the temporary file behind
            fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
            os.close(fd)
            tmp = Path(tmp_name)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
            raise write_error(out, exc) from None
        raise


def write_error(path: Path, exc: OSError) -> MplError:
    """A write failure as a message that names the file and says what to do."""
    why = {
        errno.ENOSPC: "the disk is full",
        errno.EFBIG: "the file is larger than the file-size limit (ulimit -f)",
        errno.EDQUOT: "the disk quota is exceeded",
    }.get(exc.errno, exc.strerror or str(exc))
    return MplError(f"cannot write {path}: {why}; free space or raise the limit, then re-run the same command.")
