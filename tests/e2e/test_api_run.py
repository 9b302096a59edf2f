"""`mpltools.run()` has the CLI's semantics: the same outputs (byte-identical checkpoints), the same result on
stdout, the same error message and exit code as an MplError (never a SystemExit), and no state left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

import mpltools
from mpltools import log
from mpltools.cli import main
from mpltools.errors import UsageError
from tests.e2e.helpers import DIGITS_SPLIT, REPO, digits_split, mpl, sets, sha256

DIGITS = "recipes/tiny/digits.toml"
ARGS = (*sets("schedule.steps=3", "checkpoint.every=2"), *DIGITS_SPLIT)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("apirun")
    (root / "recipes").symlink_to(REPO / "recipes")
    digits_split(root)
    return root


def test_run_train_writes_the_cli_bytes_and_prints_the_cli_result(work, monkeypatch):
    cli = mpl("train", DIGITS, "--out", "cli", *ARGS, cwd=work)
    monkeypatch.chdir(work)
    printed = [mpltools.run("train", DIGITS, "--out", out, *ARGS, echo_logs=False) for out in ("api1", "api2")]
    for name in ("student.safetensors", "teacher.safetensors"):
        assert sha256(work / "api1" / name) == sha256(work / "cli" / name) == sha256(work / "api2" / name), name
    assert printed[0] == cli.stdout.replace("cli", "api1") and printed[1] == cli.stdout.replace("cli", "api2")
    assert printed[0].strip()  # the result: the paths written
    ev = mpl("eval", "cli/student.safetensors", "--data", "d/split/val", "--json", cwd=work).stdout
    assert mpltools.run("eval", "api1/student.safetensors", "--data", "d/split/val", "--json", echo_logs=False) == ev.replace(
        "cli/", "api1/"
    )


@pytest.mark.parametrize(
    "args",
    [("recipes/tiny/nosuch.toml",), (DIGITS, "--set", 'runtime.trackers=["nosuch"]'), (DIGITS, "--set", "schedule.steps=0")],
)
def test_run_raises_the_cli_message_and_exit_code(work, monkeypatch, args):
    cli = mpl("train", *args, "--out", "x", cwd=work, check=False)
    monkeypatch.chdir(work)
    with pytest.raises(mpltools.MplError) as exc:
        mpltools.run("train", *args, "--out", "x", echo_logs=False)
    assert isinstance(exc.value, UsageError) and exc.value.exit_code == cli.returncode == 2
    assert cli.stderr.strip().splitlines()[-1] == f"error: {exc.value.message}"
    assert not (work / "x").exists()


def test_run_usage_error_state_and_logs(work, monkeypatch, capsys):
    monkeypatch.chdir(work)
    with pytest.raises(mpltools.MplError) as exc:
        mpltools.run("train", DIGITS, "--no-such-option")
    assert exc.value.exit_code == 2 and "--no-such-option" in exc.value.message
    assert "--no-such-option" in capsys.readouterr().err  # echoed to the caller's stderr, as the CLI prints it
    assert "digits" in mpltools.run("-q", "recipes", "ls")
    assert log._quiet is False  # the global flags of one call do not leak into the next
    with pytest.raises(SystemExit) as ended:  # nor does the API's mode: the CLI prints the error and exits 1
        main(["data", "info", "no/such/set"])
    assert ended.value.code == 1 and capsys.readouterr().err.startswith("error: ")
