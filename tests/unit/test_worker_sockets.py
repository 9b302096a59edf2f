"""DataLoader workers under a TMPDIR too long for a Unix socket's path (Python < 3.13): without
`short_socket_dir()` the loader waits for a batch that never comes; with it every start method delivers."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mpltools.data.worker_sockets import fits
from tests.e2e.helpers import REPO, env

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from mpltools.data.worker_sockets import short_socket_dir

    class Numbers(torch.utils.data.IterableDataset):
        def __iter__(self):
            for i in range(3):
                yield torch.full((4,), float(i))  # a tensor: handed over through a file descriptor

    if __name__ == "__main__":
        fix, method = sys.argv[1] == "fix", sys.argv[2]
        folder = short_socket_dir() if fix else None
        loader = torch.utils.data.DataLoader(Numbers(), batch_size=None, num_workers=1, timeout=8,
                                             multiprocessing_context=method)
        print([b.sum().item() for b in loader], folder is not None)
    """
)

pytestmark = pytest.mark.skipif(sys.version_info >= (3, 13), reason="Python 3.13 shortens these sockets itself")


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


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_workers_deliver_under_a_long_tmpdir(long_tmpdir, method):
    r = _run(long_tmpdir, "fix", method)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["[0.0,", "4.0,", "8.0]", "True"]
    assert list(long_tmpdir.iterdir()) == []  # nothing of multiprocessing's left under TMPDIR


def test_without_it_the_worker_cannot_hand_over_a_tensor(long_tmpdir):
    r = _run(long_tmpdir, "none", "fork")
    assert r.returncode != 0 and "AF_UNIX path too long" in r.stderr, r.stderr[-2000:]


def test_a_short_tmpdir_is_left_alone(tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", "from mpltools.data.worker_sockets import short_socket_dir; print(short_socket_dir())"],
        cwd=REPO,
        env=env(TMPDIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.strip() == "None", r.stderr
