"""The folder of DataLoader workers' sockets: made by the main process, short enough, removed at its exit.

A worker hands each tensor to the main process through a file descriptor, which multiprocessing passes over
a Unix socket it creates in a `pymp-<8 random characters>/` folder under TMPDIR. Two things go wrong when each worker makes
that folder for itself:

- a worker that is stopped (Ctrl-C, SIGTERM: the main process ends its workers) never removes its folder, so
  every interrupted run leaves a `pymp-*` folder with a socket in TMPDIR;
- before Python 3.13, a socket's path holds at most 107 bytes: under a longer TMPDIR (a scheduler's per-job
  scratch folder, a deep test folder) the worker fails with "AF_UNIX path too long" in a background thread and
  the loader waits for a batch that never comes. Python 3.13 falls back to a shorter folder; this does the same.

`socket_dir()`, called before workers start, makes the folder in the main process (its exit removes it) and the
workers inherit it under every start method. Every other temporary file (the private folder of streamed shards)
stays under TMPDIR.
"""

from __future__ import annotations

import multiprocessing.process
import os
import shutil
import sys
import tempfile
from multiprocessing import util

SUN_PATH_MAX = 107  # bytes of a socket's path, without the closing NUL (Linux; macOS allows fewer)
_LISTENER = "listener-xxxxxxxx"  # the longest name multiprocessing gives a socket in its folder


def fits(folder: str, made: bool = False) -> bool:
    """Whether multiprocessing's socket names fit a socket's path: in `folder` itself (`made`) or in the
    `pymp-<8 random characters>` folder it would make under `folder` (TMPDIR)."""
    inside = folder if made else os.path.join(folder, "pymp-xxxxxxxx")
    return len(os.fsencode(os.path.join(inside, _LISTENER))) <= SUN_PATH_MAX


def socket_dir() -> str:
    """Before starting DataLoader workers: the folder for their sockets, made now by this (the main) process so
    that its exit removes it; under /tmp when TMPDIR is too long for a socket's path. Returns the folder."""
    config = multiprocessing.process.current_process()._config  # where util.get_temp_dir() keeps its folder
    current = config.get("tempdir")
    if current is not None and fits(current, made=True):
        return current
    if sys.version_info >= (3, 13) or (current is None and fits(tempfile.gettempdir())):
        return util.get_temp_dir()  # removed at exit by multiprocessing's own finalizer
    folder = tempfile.mkdtemp(prefix="pymp-", dir="/tmp")
    util.Finalize(None, shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True}, exitpriority=-100)
    config["tempdir"] = folder
    return folder
