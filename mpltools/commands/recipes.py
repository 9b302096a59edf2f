"""`mpl recipes ls/cp`: the shipped recipes, what each reproduces, and a copy to edit; `locate` finds one by name.

Recipes are looked up in the package (`mpltools/_recipes`, when a build ships them there) and
then in the repository's `recipes/` folder. What a recipe reproduces is read from its header
comment: the title line `# NAME.toml — TITLE` and the `Reproduces:`, `Expected:` and `Cost:`
paragraphs.
"""

from __future__ import annotations

import difflib
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mpltools.atomic import atomic_file
from mpltools.errors import MplError, UsageError

_PACKAGE = Path(__file__).resolve().parents[1]
_FIELDS = {"Reproduces": "reproduces", "Expected": "expected", "Cost": "cost"}
# A new paragraph of the header: a capitalised phrase without a full stop, then a colon, e.g. `Expected:`,
# `Setting (paper §3.4):`; `(...)` after the first word is dropped from the field's name.
_NEW_PARAGRAPH = re.compile(r"^([A-Z][\w\-]*)[^:.]{0,60}?: ")


def recipe_folders() -> list[Path]:
    """Where shipped recipes live, first match wins: inside the package, then the repository."""
    return [p for p in (_PACKAGE / "_recipes", _PACKAGE.parent / "recipes") if p.is_dir()]


@dataclass
class RecipeInfo:
    name: str
    path: str
    title: str = ""
    reproduces: str = ""
    expected: str = ""
    cost: str = ""
    commands: list[str] = field(default_factory=list)


def parse_header(path: Path) -> RecipeInfo:
    """Read the leading comment block of a recipe into its title, paragraphs and `$ ` commands."""
    info = RecipeInfo(name=path.stem, path=str(path))
    current = None
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not raw.startswith("#"):
            break
        line = raw[1:].strip()
        if n == 0:
            title = re.split(r"\s[—-]+\s", line, maxsplit=1)
            info.title = title[1] if len(title) == 2 else line
            continue
        if not line:
            current = None
        elif line.startswith("$ "):
            info.commands.append(line[2:])
            current = None
        elif (m := _NEW_PARAGRAPH.match(line)) is not None:
            key = _FIELDS.get(m.group(1))
            current = key
            if key:
                setattr(info, key, line[m.end() :].strip())
        elif current:
            setattr(info, current, f"{getattr(info, current)} {line}")
    if "named in the title line" in info.reproduces:
        info.reproduces = info.title
    return info


def shipped() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in recipe_folders():
        for path in sorted(folder.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def list_recipes() -> list[dict]:
    return [asdict(parse_header(path)) for path in shipped().values()]


def render_list(items: list[dict]) -> str:
    lines = []
    for it in items:
        lines.append(f"{it['name']}: {it['title']}")
        if it["reproduces"] and it["reproduces"] != it["title"]:
            lines.append(f"    reproduces: {_first_sentence(it['reproduces'])}")
        if it["expected"]:  # whole: it says whether our runs matched
            lines.append(f"    expected: {it['expected']}")
    return "\n".join(lines)


def _first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence (`--json` has the whole paragraph)."""
    m = re.search(r"\.\s+(?=[A-Z(])", text)
    return text[: m.start() + 1] if m else text


def find(name: str) -> Path:
    """A shipped recipe by name (`digits` or `digits.toml`); exit 2 with the nearest names otherwise."""
    recipes = shipped()
    stem = name[:-5] if name.endswith(".toml") else name
    if stem in recipes:
        return recipes[stem]
    near = difflib.get_close_matches(stem, list(recipes), n=1, cutoff=0.5)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    where = ", ".join(str(f) for f in recipe_folders()) or "no recipe folder found"
    raise UsageError(f"no shipped recipe named {name!r}.{hint} `mpl recipes ls` lists them ({where}).")


def locate(recipe: Path) -> Path:
    """A recipe as given on the command line: a file, or a shipped recipe's name (a bare name that is no file here)."""
    if not recipe.exists() and recipe.suffix in ("", ".toml") and len(recipe.parts) == 1:
        return find(str(recipe))
    return recipe


def copy(name: str, dest: Path, force: bool) -> Path:
    """Copy a shipped recipe to DEST (a file, or an existing folder to copy into); never overwrites without force."""
    src = find(name)
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists() and not force:
        raise MplError(f"{dest} already exists; pass --force to overwrite it, or choose another DEST.")
    with atomic_file(dest, force=force) as tmp:
        shutil.copyfile(src, tmp)
    return dest
