"""mpltools: Meta Pseudo Labels as a set of small Unix-style commands.

Importing this package must stay cheap (no torch): `mpl --help` imports it.
"""

__version__ = "0.1.0"


def main() -> None:
    """Entry point; exported here so `accelerate launch -m mpltools` also works on the TPU launcher."""
    from mpltools.cli import main as cli_main

    cli_main()
