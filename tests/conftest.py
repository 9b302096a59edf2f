"""Shared fixtures: run `mpl` in-process (Typer's CliRunner) or as a real subprocess.

Both return `Ran(exit_code, stdout, stderr)`, so a test can be written once and run both ways.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


class Ran(NamedTuple):
    exit_code: int
    stdout: str
    stderr: str


def subprocess_env(**extra: str) -> dict:
    """The environment of a CI job: no colours or prompts, one thread, this interpreter's scripts first on PATH."""
    env = dict(os.environ, CI="true", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


@pytest.fixture
def run_cli():
    """run_cli(*args, input=None) -> Ran: `mpl ARGS` in this process. An exception that escapes the
    CLI's own error handling is re-raised (so a crash never passes for an exit code of 1)."""
    from typer.testing import CliRunner

    from mpltools.cli import app

    def run(*args, input: str | None = None) -> Ran:
        result = CliRunner().invoke(app, [str(a) for a in args], input=input)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Ran(result.exit_code, result.stdout, result.stderr)

    return run


@pytest.fixture
def run_subprocess():
    """run_subprocess(*args, input=None, cwd=None, timeout=120) -> Ran: `python -m mpltools ARGS` as a child process
    (stdin is /dev/null unless `input` is given)."""

    def run(*args, input: str | None = None, cwd: Path | None = None, timeout: float = 120) -> Ran:
        cmd = [sys.executable, "-m", "mpltools", *map(str, args)]
        r = subprocess.run(
            cmd,
            cwd=cwd,
            env=subprocess_env(),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        return Ran(r.returncode, r.stdout, r.stderr)

    return run
