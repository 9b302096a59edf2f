"""mpltools: Meta Pseudo Labels as a set of small Unix-style commands, and a small Python API (mpltools/api.py).

Importing this package must stay cheap (no torch): `mpl --help` imports it. The API's names are
loaded on first use (PEP 562 module __getattr__).
"""

__version__ = "0.1.0"

_API = ("load_checkpoint", "load_recipe", "validate_recipe", "run", "Model")
__all__ = ["__version__", "main", "MplError", *_API]


def __getattr__(name: str):
    if name in _API:
        from mpltools import api

        return getattr(api, name)
    if name == "MplError":
        from mpltools.errors import MplError

        return MplError
    raise AttributeError(f"module 'mpltools' has no attribute {name!r}")


def main() -> None:
    """Entry point; exported here so `accelerate launch -m mpltools` also works on the TPU launcher."""
    from mpltools.cli import main as cli_main

    cli_main()
