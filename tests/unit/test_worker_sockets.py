"""The folder of DataLoader workers' sockets (`socket_dir`): made by the main process, so that a stopped worker
leaves nothing under TMPDIR; under /tmp when TMPDIR is too long for a socket's path (Python < 3.13), where without
it the loader waits for a batch that never comes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from mpltools.data.worker_sockets import fits
from tests.e2e.helpers import REPO, env

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from mpltools.data.worker_sockets import socket_dir

    class Numbers(torch.utils.data.IterableDataset):
        def __iter__(self):
            for i in range(3):
                yield torch.full((4,), float(i))  # a tensor: handed over through a file descriptor

    if __name__ == "__main__":
        fix, method = sys.argv[1] == "fix", sys.argv[2]
        folder = socket_dir() if fix else None
        loader = torch.utils.data.DataLoader(Numbers(), batch_size=None, num_workers=1, timeout=8,
                                             multiprocessing_context=method)
        print([b.sum().item() for b in loader], folder is not None and folder.startswith("/tmp/pymp-"))
    """
)

OLD_PYTHON = pytest.mark.skipif(sys.version_info >= (3, 13), reason="Python 3.13 shortens these sockets itself")


@pytest.fixture
def short_tmpdir():
    """A TMPDIR short enough for multiprocessing's sockets (pytest's own folders may not be, under xdist)."""
    folder = Path(tempfile.mkdtemp(prefix="ws-", dir="/tmp"))
    assert fits(str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def long_tmpdir(tmp_path):
    folder = tmp_path / ("t" * max(1, 100 - len(str(tmp_path))))
    folder.mkdir()
    assert not fits(str(folder))
    (tmp_path / "script.py").write_text(SCRIPT)
    return folder


def _run(long_tmpdir, fix: str, method: str) -> subprocess.CompletedProcess:
    script = long_tmpdir.parent / "script.py"
    return subprocess.run(
        [sys.executable, str(script), fix, method],
        cwd=REPO,
        env=env(TMPDIR=str(long_tmpdir), PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )


@OLD_PYTHON
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_workers_deliver_under_a_long_tmpdir(long_tmpdir, method):
    r = _run(long_tmpdir, "fix", method)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["[0.0,", "4.0,", "8.0]", "True"]
    assert list(long_tmpdir.iterdir()) == []  # nothing of multiprocessing's left under TMPDIR


@OLD_PYTHON
def test_without_it_the_worker_cannot_hand_over_a_tensor(long_tmpdir):
    r = _run(long_tmpdir, "none", "fork")
    assert r.returncode != 0 and "AF_UNIX path too long" in r.stderr, r.stderr[-2000:]


WORKER_FOLDER = textwrap.dedent(
    """
    import multiprocessing, os, sys
    from multiprocessing import util
    from mpltools.data.worker_sockets import socket_dir

    def report(conn):
        conn.send(util.get_temp_dir())
        os._exit(0)  # as a worker the main process stops: no exit handlers run

    if __name__ == "__main__":
        folder = socket_dir()
        ctx = multiprocessing.get_context(sys.argv[1])
        here, there = ctx.Pipe()
        worker = ctx.Process(target=report, args=(there,))
        worker.start()
        print(folder == here.recv(), os.path.dirname(folder) == os.environ["TMPDIR"])
        worker.join()
    """
)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_use_the_main_process_s_folder_and_nothing_is_left(tmp_path, short_tmpdir, method):
    (tmp_path / "script.py").write_text(WORKER_FOLDER)
    tmp = short_tmpdir
    r = subprocess.run(
        [sys.executable, str(tmp_path / "script.py"), method],
        cwd=REPO,
        env=env(TMPDIR=str(tmp), PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.split() == ["True", "True"], r.stderr[-2000:]
    assert list(tmp.iterdir()) == []  # the main process removed it at exit; the worker made none of its own


def test_under_a_short_tmpdir_the_folder_is_multiprocessing_s_own(short_tmpdir):
    tmp_path = short_tmpdir
    r = subprocess.run(
        [sys.executable, "-c", "from mpltools.data.worker_sockets import socket_dir; print(socket_dir())"],
        cwd=REPO,
        env=env(TMPDIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.strip().startswith(str(tmp_path / "pymp-")), r.stderr
    assert list(tmp_path.iterdir()) == []
