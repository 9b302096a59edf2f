"""Terminal manners of the CLI: plain help with examples, global flags anywhere, shell completion."""

from __future__ import annotations

import re
import sys

import pytest
import typer

from mpltools import log
from mpltools.cli import app
from mpltools.cli.invocation import hoist_global_flags
from mpltools.errors import MplError
from tests.e2e.helpers import mpl, python, run_cli


def _command_paths(command, path=()):
    """Every command and group of the CLI as a tuple of names, e.g. ("data", "import")."""
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _command_paths(sub, path + (name,))


ALL_COMMANDS = list(_command_paths(typer.main.get_command(app)))


def _command(path):
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def test_the_command_tree_is_complete():
    names = {" ".join(p) for p in ALL_COMMANDS}
    assert {"train", "finetune", "eval", "data import", "data split", "reduced predict", "plot curves"} <= names


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "mpl")
def test_every_help_has_an_example_and_no_boxes(path):
    result = run_cli(*path, "--help")
    assert result.exit_code == 0, result.text
    assert re.search(r"Example:\n +mpl ", result.stdout), result.text  # an example command line, on its own line
    assert not any(ch in result.text for ch in "╭╮╰╯│─━"), result.text  # piped help is plain text


def test_bracketed_words_in_help_survive():
    assert "Take the [finetune] section" in " ".join(run_cli("finetune", "--help").stdout.split())


def test_bracketed_words_of_every_help_text_survive():
    """Every bracketed word of every command's help (`[finetune]`, `[student]`) is printed as written, not eaten as
    rich markup; walks the whole command tree, so a new command or option is covered too."""
    seen = 0
    for path in ALL_COMMANDS:
        cmd = _command(path)
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
        words = {w for t in texts for w in re.findall(r"\[[a-z_]+\]", t)}
        if not words:
            continue
        shown = " ".join(run_cli(*path, "--help").stdout.split())
        missing = [w for w in words if w not in shown]
        assert not missing, f"`mpl {' '.join(path)} --help` lost {missing}"
        seen += len(words)
    assert seen >= 1  # at least `finetune --recipe`'s "[finetune]"


def test_hoist_global_flags():
    assert hoist_global_flags(["train", "R", "-q", "--set", "a=1", "--debug"]) == ["-q", "--debug", "train", "R", "--set", "a=1"]
    assert hoist_global_flags(["plot", "curves", "--", "-q"]) == ["plot", "curves", "--", "-q"]


def test_quiet_and_debug_after_the_subcommand():
    try:
        with pytest.raises(MplError):  # --debug lets the error through: it was parsed as the global flag
            run_cli("data", "info", "no/such/set", "--debug", "-q")
        assert log._quiet is True
    finally:
        log.set_quiet(False)


def test_show_completion_for_bash_and_complete_a_word():
    # typer's switch to take the shell as a value instead of detecting the parent shell (zsh, fish... on a dev machine)
    script = mpl("--show-completion", "bash", check=False, timeout=60, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert script.returncode == 0 and "_mpl_completion()" in script.stdout and "_MPL_COMPLETE=complete_bash" in script.stdout
    words = mpl(check=False, timeout=60, _MPL_COMPLETE="complete_bash", COMP_WORDS="mpl data i", COMP_CWORD="2")
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
    examples = _examples(run_cli(*path, "--help").stdout)
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
    r = python("-c", code, timeout=120)
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
