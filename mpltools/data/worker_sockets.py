"""Sockets of DataLoader workers under a long TMPDIR (Python before 3.13).

A worker hands each tensor to the main process through a file descriptor, which multiprocessing passes over
a Unix socket it creates in `pymp-XXXXXXXX/` under TMPDIR. A socket's path holds at most 107 bytes: under a
longer TMPDIR (a scheduler's per-job scratch folder, a deep test folder) the worker fails with "AF_UNIX path
too long" in a background thread and the loader waits for a batch that never comes. Python 3.13 falls back to
a shorter temporary folder for these sockets; `short_socket_dir()` does the same on older Pythons, for the
sockets only: every other temporary file (the private folder of streamed shards) stays under TMPDIR.
"""

from __future__ import annotations

import multiprocessing.process
import os
import shutil
import sys
import tempfile
from multiprocessing import util

SUN_PATH_MAX = 107  # bytes of a socket's path, without the closing NUL (Linux; macOS allows fewer)
_PROBE = os.path.join("pymp-xxxxxxxx", "listener-xxxxxxxx")  # the longest name multiprocessing gives a socket


def fits(folder: str) -> bool:
    """Whether multiprocessing's socket names under `folder` (TMPDIR) fit a socket's path."""
    return len(os.fsencode(os.path.join(folder, _PROBE))) <= SUN_PATH_MAX


def short_socket_dir() -> str | None:
    """Before starting DataLoader workers: when TMPDIR is too long for their sockets, give multiprocessing a
    folder of its own under /tmp (removed when the process ends; workers inherit it). Returns that folder, or
    None when nothing had to change."""
    if sys.version_info >= (3, 13):
        return None
    config = multiprocessing.process.current_process()._config  # where util.get_temp_dir() keeps its folder
    current = config.get("tempdir")
    if current is not None and len(os.fsencode(os.path.join(current, "listener-xxxxxxxx"))) <= SUN_PATH_MAX:
        return None
    if current is None and fits(tempfile.gettempdir()):
        return None
    folder = tempfile.mkdtemp(prefix="pymp-", dir="/tmp")
    util.Finalize(None, shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True}, exitpriority=-100)
    config["tempdir"] = folder
    return folder
