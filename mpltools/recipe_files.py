"""Where recipes are: a file given on the command line, or a shipped recipe by name.

Every command that takes a recipe resolves it here (`locate`), so `mpl train digits`, `mpl reduced
train reduced_b7_yfcc`, `mpl finetune --recipe tiny/digits` and `mpl recipes validate digits` mean the
same file, in a checkout and in an installed wheel. The shipped recipes are the `*.toml` files of
the package's `_recipes` folder (a wheel ships them there) or of the repository's `recipes/`; the
tiny twins under `tiny/` go by `tiny/NAME`. A path that exists wins over a name. Standard library only.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from mpltools.errors import UsageError

_PACKAGE = Path(__file__).resolve().parent
TINY = "tiny"  # the folder of the seconds-long twins, and their names' prefix


def recipe_folders() -> list[Path]:
    """Where shipped recipes live, first match wins: inside the package, then the repository."""
    folders = [p for p in (_PACKAGE / "_recipes", _PACKAGE.parent / "recipes") if p.is_dir()]
    return [p for n, p in enumerate(folders) if p.resolve() not in [q.resolve() for q in folders[:n]]]  # a checkout links them


def shipped() -> dict[str, Path]:
    """Every shipped recipe by name: `digits`, ..., then the tiny twins `tiny/digits`, ..."""
    found: dict[str, Path] = {}
    for pattern, prefix in (("*.toml", ""), (f"{TINY}/*.toml", f"{TINY}/")):
        for folder in recipe_folders():
            for path in sorted(folder.glob(pattern)):
                found.setdefault(prefix + path.stem, path)
    return found


def find(name: str) -> Path:
    """A shipped recipe by name (`digits`, `digits.toml`, `tiny/digits`); exit 2 with the nearest names otherwise."""
    recipes = shipped()
    stem = name[:-5] if name.endswith(".toml") else name
    if stem in recipes:
        return recipes[stem]
    near = difflib.get_close_matches(stem, list(recipes), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(filter(None, [', '.join(map(repr, near[:-1])), repr(near[-1])]))}?" if near else ""
    where = ", ".join(str(f) for f in recipe_folders()) or "no recipe folder found"
    raise UsageError(f"no recipe file and no shipped recipe named {name!r}.{hint} `mpl recipes ls` lists them ({where}).")


def locate(recipe: str | Path) -> Path:
    """A recipe as given on the command line: a file that exists, else a shipped recipe's name."""
    path = Path(recipe)
    if path.exists() or path.is_absolute() or path.suffix not in ("", ".toml"):
        return path
    return find(str(recipe))


def complete_names(incomplete: str) -> list[str]:
    """Shell completion of a recipe argument: shipped names and `*.toml` files (and folders) under the typed prefix."""
    names = [n for n in shipped() if n.startswith(incomplete)]
    folder, _, start = incomplete.rpartition("/")
    base = Path(folder or ".")
    files = []
    if base.is_dir():
        prefix = f"{folder}/" if folder else ""
        for entry in sorted(base.iterdir()):
            if entry.name.startswith(start) and not entry.name.startswith(".") and (entry.is_dir() or entry.suffix == ".toml"):
                files.append(prefix + entry.name + ("/" if entry.is_dir() else ""))
    return sorted(set(names)) + [f for f in files if f not in names]
