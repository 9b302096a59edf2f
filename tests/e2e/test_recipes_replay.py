"""Every tiny recipe's header commands run verbatim from a checkout's root (as `bash .ci/replay` does)."""

from __future__ import annotations

import json

import pytest

from tests.e2e.helpers import REPO, recipe_commands, replay

TINY = sorted(p.name for p in (REPO / "recipes/tiny").glob("*.toml"))


@pytest.mark.parametrize("name", TINY)
@pytest.mark.slow
def test_tiny_recipe_header_replays(tmp_path, name):
    if name == "digits.toml":
        pytest.skip("replayed by tests/e2e/test_train.py and test_finetune_eval.py")
    commands = recipe_commands(REPO / "recipes/tiny" / name)
    assert any(c.startswith("mpl train ") for c in commands)
    results = replay(f"recipes/tiny/{name}", tmp_path)
    last = commands[-1]
    if last.startswith("mpl eval") and "--json" in last:
        metrics = json.loads(results[-1].stdout)
        assert metrics["num_samples"] > 0 and 0.0 <= metrics["top1"] <= 1.0


def test_full_recipes_have_tiny_twins_with_the_same_method_and_model_family():
    from mpltools.config import load_recipe

    for full in sorted((REPO / "recipes").glob("*.toml")):
        twin = REPO / "recipes/tiny" / full.name
        assert twin.is_file(), f"{full.name} has no tiny twin"
        a, b = load_recipe(full), load_recipe(twin)
        assert a.method.name == b.method.name
        variant = lambda m: (m.pseudo_labels, m.pseudo_label_view, m.student_view, m.feedback)  # noqa: E731
        assert variant(a.method) == variant(b.method), (full.name, variant(a.method), variant(b.method))
        family = lambda name: name.split("_")[0].replace("wrn28", "wide").replace("wide", "wide")  # noqa: E731
        assert family(a.model.name)[:4] == family(b.model.name)[:4], (a.model.name, b.model.name)
        assert a.augment.kind == b.augment.kind
