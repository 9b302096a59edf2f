"""Terminal manners of the CLI: plain help with examples, global flags anywhere, shell completion."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from mpltools import log
from mpltools.cli import app
from mpltools.cli.invocation import hoist_global_flags
from mpltools.errors import MplError
from tests.conftest import subprocess_env


def _command_paths(command, path=()):
    """Every command and group of the CLI as a tuple of names, e.g. ("data", "import")."""
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _command_paths(sub, path + (name,))


ALL_COMMANDS = list(_command_paths(typer.main.get_command(app)))


def test_the_command_tree_is_complete():
    names = {" ".join(p) for p in ALL_COMMANDS}
    assert {"train", "finetune", "eval", "data import", "data split", "reduced predict", "plot curves"} <= names


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "mpl")
def test_every_help_has_an_example_and_no_boxes(path):
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert re.search(r"Example:\n +mpl ", result.output), result.output  # an example command line, on its own line
    assert not any(ch in result.output for ch in "╭╮╰╯│─━"), result.output  # piped help is plain text


def test_bracketed_words_in_help_survive():
    result = CliRunner().invoke(app, ["finetune", "--help"])
    assert "Take the [finetune] section" in " ".join(result.output.split())


def test_hoist_global_flags():
    assert hoist_global_flags(["train", "R", "-q", "--set", "a=1", "--debug"]) == ["-q", "--debug", "train", "R", "--set", "a=1"]
    assert hoist_global_flags(["plot", "curves", "--", "-q"]) == ["plot", "curves", "--", "-q"]


def test_quiet_and_debug_after_the_subcommand():
    try:
        result = CliRunner().invoke(app, ["data", "info", "no/such/set", "--debug", "-q"])
        assert isinstance(result.exception, MplError)  # --debug lets the error through: it was parsed as the global flag
        assert log._quiet is True
    finally:
        log.set_quiet(False)


def _mpl(*args, **env):
    return subprocess.run(
        [sys.executable, "-m", "mpltools", *args],
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_show_completion_for_bash_and_complete_a_word():
    # typer's switch to take the shell as a value instead of detecting the parent shell (zsh, fish... on a dev machine)
    script = _mpl("--show-completion", "bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert script.returncode == 0 and "_mpl_completion()" in script.stdout and "_MPL_COMPLETE=complete_bash" in script.stdout
    words = _mpl(_MPL_COMPLETE="complete_bash", COMP_WORDS="mpl data i", COMP_CWORD="2")
    assert words.returncode == 0 and words.stdout.split() == ["import", "info"]


def _examples(text: str) -> list[str]:
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.strip() == "Example:")
    return [line.strip() for line in lines[start + 1 :] if line.strip().startswith("mpl ")]


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "mpl")
def test_every_example_parses_as_a_real_command_line(path):
    """The examples name real commands and options (parsed by click, not run)."""
    import shlex

    root = typer.main.get_command(app)
    examples = _examples(CliRunner().invoke(app, [*path, "--help"]).output)
    assert examples
    for example in examples:
        line = example.split(" > ")[0].split(" | ")[0]  # the command, without the shell's redirection
        args = [a for a in hoist_global_flags(shlex.split(line)[1:]) if a not in ("-q", "--quiet", "--debug")]
        command = root
        while hasattr(command, "commands") and args and args[0] in command.commands:
            command = command.commands[args.pop(0)]
        assert not hasattr(command, "commands"), example  # ends at a command, not a group
        command.make_context(command.name, args)  # raises on an unknown option or a missing argument


def test_no_help_imports_torch_or_a_command():
    """`mpl --version` and every command's --help run without torch, matplotlib or any `mpltools.commands` module."""
    code = (
        "import sys\nfrom mpltools.cli import main\n"
        f"for argv in {[['--version']] + [[*p, '--help'] for p in ALL_COMMANDS]!r}:\n"
        "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, (argv, e.code)\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib') or m.startswith('mpltools.commands')]\n"
        "assert not loaded, loaded\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("mpl (mpltools) ") and r.stdout.count("Example:") == len(ALL_COMMANDS)


def test_a_dash_waits_on_no_stdin_while_the_shell_completes(monkeypatch):
    from mpltools.cli.options import path_from_stdin

    class Unreadable:
        def readline(self):
            raise AssertionError("stdin was read")

    monkeypatch.setattr(sys, "stdin", Unreadable())
    monkeypatch.setenv("_MPL_COMPLETE", "complete_bash")
    assert path_from_stdin("-") == "-"
    monkeypatch.delenv("_MPL_COMPLETE")
    with pytest.raises(AssertionError, match="stdin was read"):
        path_from_stdin("-")
