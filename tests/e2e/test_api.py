"""The Python API (mpltools/api.py): README's example runs as written; `import mpltools` stays torch-free."""

from __future__ import annotations

import os
import re

import pytest

from tests.e2e.helpers import REPO, python


def readme_python_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) == 1, "README.md should hold exactly one ```python example"
    return blocks[0]


def test_readme_python_example_runs_on_tiny_data(tmp_path):
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    code = readme_python_block() + (
        "\nassert torch.allclose(probs.sum(dim=1), torch.ones(2), atol=1e-5) and probs.shape == (2, 2)"
        "\nassert not model.net.training and isinstance(model.net, torch.nn.Module)"
        "\nimport json; assert json.loads(result)['step'] == 20"
        "\n[(name, p)] = model.classify(torch.tensor([0.0, 0.0])); assert name in model.classes and 0.5 <= p <= 1"
        "\ntry:\n    mpltools.run('train', 'recipes/tiny/nosuch.toml')\nexcept mpltools.MplError as exc:\n    assert exc.exit_code == 2, exc.exit_code\n"
        "else:\n    raise AssertionError('no MplError')\n"
    )
    r = python("-c", code, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "runs/api/student.safetensors").is_file()


def test_import_mpltools_does_not_import_torch():
    code = (
        "import sys, mpltools; mpltools.__version__; assert 'torch' not in sys.modules, 'torch imported'; print(mpltools.__all__)"
    )
    r = python("-c", code, cwd=os.getcwd())
    assert r.returncode == 0, r.stderr
    assert "load_checkpoint" in r.stdout


def test_validate_recipe_raises_usage_error():
    import mpltools

    with pytest.raises(mpltools.MplError) as exc:
        mpltools.validate_recipe(REPO / "recipes/tiny/twomoon.toml", ["schedule.steps=0"])
    assert exc.value.exit_code == 2 and "schedule.steps" in exc.value.message


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda r: setattr(r.model, "name", "resnet5"), "model.name"),  # the model registry
        (lambda r: setattr(r.method, "feedback", "cos"), "method.feedback"),  # a choice
        (lambda r: setattr(r.teacher, "momentum", 0.5), "momentum"),  # a rule between keys
    ],
    ids=["model", "choice", "cross-field"],
)
def test_validate_recipe_of_a_recipe_object_checks_what_train_checks(change, key):
    import mpltools

    recipe = mpltools.load_recipe(REPO / "recipes/tiny/twomoon.toml")
    change(recipe)
    with pytest.raises(mpltools.MplError) as exc:
        mpltools.validate_recipe(recipe)
    assert exc.value.exit_code == 2 and key in exc.value.message
    fine = mpltools.load_recipe(REPO / "recipes/tiny/twomoon.toml")
    assert mpltools.validate_recipe(fine, ["schedule.steps=3"]).schedule.steps == 3
