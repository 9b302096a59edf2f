"""The wheel: distribution meta-pseudo-labels, recipes inside the package, the Apache-2.0 LICENSE."""

from __future__ import annotations

import zipfile

from tests.e2e.helpers import REPO, python


def test_wheel_ships_recipes_and_license(tmp_path):
    r = python("-m", "pip", "wheel", REPO, "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    [wheel] = tmp_path.glob("*.whl")
    assert wheel.name.startswith("meta_pseudo_labels-")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.removeprefix("mpltools/_recipes/") for n in names if n.startswith("mpltools/_recipes/") and n.endswith(".toml")}
    expected = {str(p.relative_to(REPO / "recipes")) for p in (REPO / "recipes").rglob("*.toml")}
    assert expected and shipped == expected
    license_text = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("licenses/LICENSE"))).decode()
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert {"mpltools/cli/__init__.py", "mpltools/cli/options.py", "mpltools/__main__.py"} <= set(names)  # the CLI package
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "mpl = mpltools.cli:main" in entry_points  # the `mpl` console script
