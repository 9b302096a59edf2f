"""`mpl env`: versions, devices and accelerate's configuration, to paste into a bug report."""

from __future__ import annotations

import typer

from mpltools.cli_common import _emit, _execute


def env_command(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Versions (python, torch, accelerate, safetensors, webdataset, mpltools), devices and accelerate's config.

    \b
    Example:
      mpl env
      mpl env --json > env.json
    """
    from mpltools.commands import env as command

    report = _execute(command.collect)
    _emit(report, as_json, [command.render(report)])
