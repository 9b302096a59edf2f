"""Small helpers for the end-to-end tests: run `mpl` as a real subprocess, replay recipe headers."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def env(**extra) -> dict:
    e = dict(os.environ)
    e.update(
        CI="true",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        HF_HOME=str(Path(os.environ.get("TMPDIR", "/tmp")) / "mpl-hf-home"),
    )
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    e.update(extra)
    return e


def mpl(
    *args, cwd: Path, check: bool = True, timeout: int = 600, stdin: str | None = None, **env_extra
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mpltools", *map(str, args)]
    result = subprocess.run(
        cmd,
        cwd=cwd,
        env=env(**env_extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{shlex.join(cmd)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def recipe_commands(recipe: Path) -> list[str]:
    return [line[4:].strip() for line in recipe.read_text().splitlines() if line.startswith("# $ ")]


def replay(recipe_rel: str, workdir: Path, timeout: int = 600) -> list[subprocess.CompletedProcess]:
    """Run a recipe's `# $` lines verbatim with `bash -c` in a copy of the repo's recipes/."""
    if not (workdir / "recipes").exists():
        shutil.copytree(REPO / "recipes", workdir / "recipes")
    results = []
    for line in recipe_commands(REPO / recipe_rel):
        r = subprocess.run(
            ["bash", "-c", f"set -euo pipefail; {line}"],
            cwd=workdir,
            env=env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if r.returncode != 0:
            raise AssertionError(f"`{line}` exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-4000:]}")
        results.append(r)
    return results


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
