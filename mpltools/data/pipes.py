"""Which `pipe:` locations this process may run: only those typed on the command line with --allow-pipe.

A `pipe:CMD` shard location runs CMD in a shell, so it is never taken from a recipe, a manifest or any
other file. The CLI calls `allow_from_command_line` on every invocation (an empty list without the flag);
a Python caller who means it can call `allow("pipe:...")`. Stdlib only, so the CLI stays quick to start.
"""

from __future__ import annotations

_allowed: set[str] = set()


def allow_from_command_line(args: list[str]) -> None:
    """Replace the allowed set with the `pipe:` words among `args`: a location itself (`--data pipe:...`)
    or an option's value after `=` (`--set data.labeled=pipe:...`, `--data=pipe:...`)."""
    _allowed.clear()
    for arg in args:
        if arg.startswith("pipe:"):
            _allowed.add(arg)
        elif "=pipe:" in arg:
            _allowed.add(arg.split("=", 1)[1])


def allow(location: str) -> None:
    _allowed.add(location)


def allowed(location: str) -> bool:
    return location in _allowed
