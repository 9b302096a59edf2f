"""Repo-root launcher, NOT installed with the package.

`accelerate launch mpl train recipes/x.toml` runs `python mpl train ...`, i.e. a path relative to the
working directory; a directory with `__main__.py` satisfies that. The TPU launcher instead imports
`mpl` and calls its `main`, hence the re-export below.
"""

from mpltools.cli import main  # noqa: F401
