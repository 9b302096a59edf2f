"""The wheel: distribution meta-pseudo-labels, recipes inside the package (found by name once installed), the
Apache-2.0 LICENSE."""

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

    # Installed, the wheel has no recipes/ folder: the shipped recipes go by name from mpltools/_recipes.
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    work = tmp_path / "work"
    work.mkdir()
    site = {"PYTHONPATH": str(tmp_path / "site")}  # ahead of the editable install of the checkout
    where = python("-c", "import mpltools; print(mpltools.__file__)", cwd=work, **site)
    assert where.stdout.startswith(str(tmp_path / "site")), where
    for args, want in (
        (["train", "tiny/digits", "--print-config"], 'name = "small_cnn"'),
        (["recipes", "cp", "tiny/digits", "t.toml"], "t.toml"),
        (["recipes", "ls"], "tiny/twomoon"),
    ):
        ran = python("-m", "mpltools", *args, cwd=work, timeout=60, **site)
        assert ran.returncode == 0 and want in ran.stdout, (args, ran.stdout, ran.stderr)
