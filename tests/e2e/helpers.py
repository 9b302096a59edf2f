"""The tests' one way to run things: `mpl` in this process or as a child process, `accelerate launch`, a committed
script, a recipe's `# $` lines; the one environment they all run in; and the small data worlds several files share."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]
TWOMOON = str(REPO / "recipes/tiny/twomoon.toml")
DIGITS = str(REPO / "recipes/tiny/digits.toml")


def env(**extra: str) -> dict:
    """The environment of a CI job: no colours or prompts, one thread, a private Hugging Face cache, this
    interpreter's scripts first on PATH; `extra` on top."""
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


class Ran(NamedTuple):
    exit_code: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        """Everything printed: stdout, then stderr."""
        return self.stdout + self.stderr


# --- in this process ---------------------------------------------------------------------------------------------


def run_cli(*args, input: str | None = None) -> Ran:
    """`mpl ARGS` in this process (Typer's CliRunner). An exception that escapes the CLI's own error handling is
    re-raised, so a crash never passes for an exit code of 1."""
    from typer.testing import CliRunner

    from mpltools.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def cli(*args) -> tuple[int, str]:
    """`mpl ARGS` in this process: the exit code and everything it printed."""
    r = run_cli(*args)
    return r.exit_code, r.text


def ok(*args) -> Ran:
    """`mpl ARGS` in this process, which must succeed (a set-up step)."""
    r = run_cli(*args)
    assert r.exit_code == 0, f"mpl {shlex.join(map(str, args))} exited {r.exit_code}\n{r.text[-3000:]}"
    return r


# --- child processes ---------------------------------------------------------------------------------------------


def _failed(what: str, r: subprocess.CompletedProcess) -> AssertionError:
    return AssertionError(f"{what} exited {r.returncode}\nstdout:\n{r.stdout[-2000:]}\nstderr:\n{r.stderr[-4000:]}")


def run_process(
    cmd: list, *, cwd: Path | None = None, check: bool = False, timeout: float = 600, stdin: str | None = None, **env_extra
) -> subprocess.CompletedProcess:
    """Run `cmd` in the CI environment (plus `env_extra`), capturing text; stdin is /dev/null unless given.
    With check, a non-zero exit fails the test with the command and the tails of its output."""
    cmd = [str(c) for c in cmd]
    r = subprocess.run(
        cmd,
        cwd=cwd,
        env=env(**env_extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )
    if check and r.returncode != 0:
        raise _failed(shlex.join(cmd), r)
    return r


def mpl(
    *args, cwd: Path | None = None, check: bool = True, timeout: float = 600, stdin: str | None = None, **env_extra
) -> subprocess.CompletedProcess:
    """`python -m mpltools ARGS` as a child process; by default it must succeed."""
    return run_process([sys.executable, "-m", "mpltools", *args], cwd=cwd, check=check, timeout=timeout, stdin=stdin, **env_extra)


def run_subprocess(*args, input: str | None = None, cwd: Path | None = None, timeout: float = 120) -> Ran:
    """`python -m mpltools ARGS` as a child process, as a `Ran` (the in-process runner's shape)."""
    r = mpl(*args, cwd=cwd, check=False, timeout=timeout, stdin=input)
    return Ran(r.returncode, r.stdout, r.stderr)


def python(*args, cwd: Path | None = None, check: bool = False, timeout: float = 60, **env_extra) -> subprocess.CompletedProcess:
    """`python ARGS` (a `-c` snippet, a launcher, a script) as a child process (`env_extra` added to its environment)."""
    return run_process([sys.executable, *args], cwd=cwd, check=check, timeout=timeout, **env_extra)


def interrupted(*args, out: Path, sig: int, cwd: Path) -> subprocess.Popen:
    """`python -m mpltools ARGS --out OUT` (a training command) as a child process, sent `sig` once its first state
    is committed (or when two minutes have passed); returns the finished process."""
    cmd = [sys.executable, "-m", "mpltools", *map(str, args), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any((p / "COMMITTED").exists() for p in (out / "state").glob("step_*")):
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    return proc


def cli_in_fresh_python(*argvs: list[str], never: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Each of `argvs` through `mpltools.cli.main` in one fresh interpreter, each of which must exit 0, after which
    none of the modules `never` may have been imported (help and --version stay light)."""
    code = (
        "import sys\nfrom mpltools.cli import main\n"
        f"for argv in {[list(a) for a in argvs]!r}:\n"
        "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, (argv, e.code)\n"
        f"loaded = [m for m in {list(never)!r} if m in sys.modules]\n"
        "assert not loaded, f'imported {loaded}'\n"
    )
    return python("-c", code, timeout=120)


def run_script(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """A committed script of the repository (a study, a benchmark), run from the repository root; it must succeed."""
    return python(script, *args, cwd=REPO, check=True, timeout=timeout)


def accelerate_launch(*args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`accelerate launch` of ARGS (`-m mpltools ...` or a script) as 2 CPU processes on this machine."""
    launch = [Path(sys.executable).parent / "accelerate", "launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    return run_process([*launch, *args], cwd=cwd, timeout=timeout, ACCELERATE_USE_CPU="1")


def recipe_commands(recipe: Path) -> list[str]:
    return [line[4:].strip() for line in recipe.read_text().splitlines() if line.startswith("# $ ")]


def replay(recipe_rel: str, workdir: Path, timeout: int = 600, only: str = "") -> list[subprocess.CompletedProcess]:
    """Run a recipe's `# $` lines (those starting with `only`) verbatim with `bash -c` in a copy of the repo's recipes/."""
    if not (workdir / "recipes").exists():
        shutil.copytree(REPO / "recipes", workdir / "recipes")
    lines = [line for line in recipe_commands(REPO / recipe_rel) if line.startswith(only)]
    return [run_process(["bash", "-c", f"set -euo pipefail; {line}"], cwd=workdir, check=True, timeout=timeout) for line in lines]


# --- recipe overrides and shared data ----------------------------------------------------------------------------


def sets(*assignments: str) -> list[str]:
    """`--set` before each `key=value`: sets("schedule.steps=2", "eval.every=0")."""
    return [arg for a in assignments for arg in ("--set", a)]


def twomoon_split(root: Path) -> Path:
    """TwoMoon (noise 0.1, scale 20) imported to ROOT/all and split 3 labelled and 5 val per class into ROOT/split,
    in this process; returns ROOT/split."""
    ok("data", "import", "twomoon", "--out", root / "all", "--seed", "0", "--noise", "0.1", "--scale", "20")
    ok("data", "split", root / "all", "--labeled-per-class", "3", "--val-per-class", "5", "--seed", "0", "--out", root / "split")
    return root / "split"


DIGITS_SPLIT = sets("data.labeled=d/split/labeled", "data.unlabeled=d/split/unlabeled", "data.val=d/split/val")


def digits_split(root: Path) -> Path:
    """The digits imported to ROOT/d/all and split 5 labelled and 10 val per class into ROOT/d/split (child
    processes); train on it from ROOT with DIGITS_SPLIT."""
    mpl("data", "import", "digits", "--out", "d/all", "--seed", "0", cwd=root)
    split = ["--labeled-per-class", "5", "--val-per-class", "10", "--seed", "0"]
    mpl("data", "split", "d/all", *split, "--out", "d/split", cwd=root)
    return root / "d/split"


# --- reading and damaging files ---------------------------------------------------------------------------------


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, bytes]:
    """Every file (its bytes) and folder (b"<dir>") below root, by relative path."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


def meta_of(path: Path) -> dict:
    """A safetensors file's metadata."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        return fh.metadata()


def tensors(path: Path) -> dict:
    """A safetensors file's tensors (torch), by name."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def with_weights(src: Path, dst: Path, change) -> str:
    """A copy of checkpoint src at dst, its metadata kept, its tensors as `change(tensors)` left them."""
    from safetensors.torch import save_file

    weights = tensors(src)
    change(weights)
    save_file(weights, dst, metadata=meta_of(src))
    return str(dst)


def edit_manifest(src: Path, dst: Path, edit) -> str:
    """A copy of shard set src at dst whose manifest.json is as `edit(manifest)` left it."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return str(dst)


def corrupt_shards(src: Path, dst: Path) -> str:
    """A copy whose manifest is intact but whose shards are garbage of the same length: the preflight (which
    reads manifests) passes, the command fails only once it streams the samples, after its output exists."""
    shutil.copytree(src, dst)
    for tar in dst.glob("*.tar"):
        tar.write_bytes(bytes(range(256)) * (tar.stat().st_size // 256) + b"x" * (tar.stat().st_size % 256))
    return str(dst)
