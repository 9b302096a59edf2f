"""What `mpl train` and `mpl reduced train` do with RECIPE before the work: resolve it (file < --set < --seed),
show it (`--print-config`: model names and kwargs checked, the resolved recipe as TOML), and name the run folder."""

from __future__ import annotations

from pathlib import Path

from mpltools.config import Recipe, load_recipe, to_toml
from mpltools.preflight import check_models


def load(path: Path, overrides: list[str], seed: int | None) -> Recipe:
    return load_recipe(path, overrides, seed=seed)


def show(recipe: Recipe, path: Path) -> str:
    check_models(recipe, str(path))
    return to_toml(recipe)


def run_folder(out: Path | None, path: Path) -> Path:
    """--out, or runs/<recipe name>."""
    return out or Path("runs") / path.stem
