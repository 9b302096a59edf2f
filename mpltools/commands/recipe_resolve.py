"""What `mpl train` and `mpl reduced train` do with RECIPE before the work: resolve it (file < --set < --seed),
check it (`preflight.load_and_check`: keys, model names and kwargs, rules between keys), show it (`--print-config`: the resolved recipe as TOML), and name the run folder."""

from __future__ import annotations

from pathlib import Path

from mpltools.config import Recipe, to_toml
from mpltools.preflight import load_and_check


def load(path: Path, overrides: list[str], seed: int | None) -> Recipe:
    return load_and_check(path, overrides, seed=seed)


def show(recipe: Recipe, path: Path) -> str:
    """The resolved recipe as TOML (`load` has checked the model names and kwargs)."""
    return to_toml(recipe)


def run_folder(out: Path | None, path: Path) -> Path:
    """--out, or runs/<recipe name>."""
    return out or Path("runs") / path.stem
