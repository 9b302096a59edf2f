"""Issue 9, item 4: every bracketed word of every command's help (`[finetune]`, `[student]`) is printed as written,
not eaten as rich markup. Walks the whole command tree, so a new command or option is covered too."""

from __future__ import annotations

import re

import typer.main
from typer.testing import CliRunner

from mpltools.cli import app


def _commands(cmd, path):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, [*path, name])


def test_bracketed_words_of_every_help_text_survive():
    seen = 0
    for path, cmd in _commands(typer.main.get_command(app), []):
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
        words = {w for t in texts for w in re.findall(r"\[[a-z_]+\]", t)}
        if not words:
            continue
        shown = " ".join(CliRunner().invoke(app, [*path, "--help"]).output.split())
        missing = [w for w in words if w not in shown]
        assert not missing, f"`mpl {' '.join(path)} --help` lost {missing}"
        seen += len(words)
    assert seen >= 1  # at least `finetune --recipe`'s "[finetune]"
