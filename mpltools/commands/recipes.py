"""`mpl recipes ls/cp`: the shipped recipes, what each reproduces, and a copy to edit.

Recipes are found by `mpltools.recipe_files` (the package's `_recipes`, then the repository's
`recipes/`; the tiny twins as `tiny/NAME`). What a recipe reproduces is read from its header
comment: the title line `# NAME.toml — TITLE` and the `Reproduces:`, `Expected:` and `Cost:`
paragraphs.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mpltools.atomic import atomic_file
from mpltools.errors import MplError
from mpltools.recipe_files import TINY, find, shipped

_FIELDS = {"Reproduces": "reproduces", "Expected": "expected", "Cost": "cost"}
# A new paragraph of the header: a capitalised phrase without a full stop, then a colon, e.g. `Expected:`,
# `Setting (paper §3.4):`; `(...)` after the first word is dropped from the field's name.
_NEW_PARAGRAPH = re.compile(r"^([A-Z][\w\-]*)[^:.]{0,60}?: ")


@dataclass
class RecipeInfo:
    name: str
    path: str
    title: str = ""
    reproduces: str = ""
    expected: str = ""
    cost: str = ""
    commands: list[str] = field(default_factory=list)


def parse_header(path: Path, name: str = "") -> RecipeInfo:
    """Read the leading comment block of a recipe into its title, paragraphs and `$ ` commands."""
    info = RecipeInfo(name=name or path.stem, path=str(path))
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


def list_recipes(tiny: bool = False) -> list[dict]:
    """The shipped recipes' header fields; `tiny`: the seconds-long twins (`tiny/NAME`) instead."""
    return [asdict(parse_header(path, name)) for name, path in shipped().items() if name.startswith(f"{TINY}/") == tiny]


def render_list(items: list[dict], tiny: list[dict] = ()) -> str:
    lines = []
    for it in items:
        lines.append(f"{it['name']}: {it['title']}")
        if it["reproduces"] and it["reproduces"] != it["title"]:
            lines.append(f"    reproduces: {_first_sentence(it['reproduces'])}")
        if it["expected"]:  # whole: it says whether our runs matched
            lines.append(f"    expected: {it['expected']}")
    if tiny:
        lines.append(f"\nTiny twins, seconds on a CPU (`mpl recipes cp {TINY}/NAME`, `mpl train {TINY}/NAME`):")
        lines.extend(f"{it['name']}: {it['title']}" for it in tiny)
    return "\n".join(lines)


def _first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence (`--json` has the whole paragraph)."""
    m = re.search(r"\.\s+(?=[A-Z(])", text)
    return text[: m.start() + 1] if m else text


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
