"""`mpl env`: versions, devices and accelerate's configuration, to paste into a bug report."""

from __future__ import annotations

from mpltools.cli import options
from mpltools.cli.invocation import emit


def env(as_json: bool = options.as_json("Print the report as JSON.")) -> None:
    """Versions (python, torch, accelerate, safetensors, webdataset, mpltools), devices and accelerate's config.

    \b
    Example:
      mpl env
      mpl env --json > env.json
    """
    from mpltools.commands import env as command

    emit(command.collect(), as_json, command.render)
