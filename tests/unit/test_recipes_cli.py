"""`mpl recipes ls/cp/validate`: the shipped recipes, copying one, and a dry check that names the key at fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpltools import recipe_files
from mpltools.commands import recipes
from tests.e2e.helpers import REPO, ok

SHIPPED = sorted(p.stem for p in (REPO / "recipes").glob("*.toml"))


def test_ls_lists_every_shipped_recipe_with_what_it_reproduces(run_cli):
    ran = run_cli("recipes", "ls", "--json")
    assert ran.exit_code == 0, ran.stderr
    items = {r["name"]: r for r in json.loads(ran.stdout)["recipes"]}
    assert sorted(items) == SHIPPED and len(SHIPPED) >= 9
    for name, r in items.items():
        assert r["title"] and r["reproduces"] and r["expected"], name
        assert any(
            c.startswith(f"mpl train recipes/{name}.toml") or c.startswith(f"mpl reduced train recipes/{name}.toml")
            for c in r["commands"]
        ), name
    assert items["cifar10_4k"]["reproduces"] == "MPL on CIFAR-10-4K with WRN-28-2 (paper §3.2, Table 2)."
    assert items["cifar10_4k"]["expected"].startswith("96.11 ± 0.07% top-1 after finetuning")
    assert "NOT reproduced" in items["twomoon"]["expected"]
    text = run_cli("recipes", "ls").stdout
    assert "cifar10_4k: MPL on CIFAR-10-4K" in text and "    expected: 96.11" in text


def test_header_paragraphs_end_at_the_next_field(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text(
        "# x.toml — A title.\n#\n# Reproduces: Table 9\n# of the paper.\n# Expected (paper): 1% top-1;\n"
        "# more. Measured here (file): 2%.\n# Setting known from the paper: big.\n# Cost: 3 hours.\n#\n"
        "# $ mpl train x.toml\n\n[data]\n# Expected: not a header line\n"
    )
    info = recipes.parse_header(path)
    assert (info.title, info.reproduces, info.cost, info.commands) == (
        "A title.",
        "Table 9 of the paper.",
        "3 hours.",
        ["mpl train x.toml"],
    )
    assert info.expected == "1% top-1; more. Measured here (file): 2%."


def test_cp_copies_and_never_overwrites_without_force(run_cli, tmp_path):
    dest = tmp_path / "mine.toml"
    ran = run_cli("recipes", "cp", "digits", dest)
    assert ran.exit_code == 0 and ran.stdout.strip() == str(dest)
    assert dest.read_bytes() == (REPO / "recipes" / "digits.toml").read_bytes()
    dest.write_text("# my edits\n")
    ran = run_cli("recipes", "cp", "digits.toml", dest)
    assert ran.exit_code == 1 and f"{dest} already exists; pass --force" in ran.stderr
    assert dest.read_text() == "# my edits\n"
    assert run_cli("recipes", "cp", "digits", dest, "--force").exit_code == 0
    assert dest.read_bytes() == (REPO / "recipes" / "digits.toml").read_bytes()
    folder = tmp_path / "folder"
    folder.mkdir()
    assert run_cli("recipes", "cp", "twomoon", folder).stdout.strip() == str(folder / "twomoon.toml")
    ran = run_cli("recipes", "cp", "digts", tmp_path / "y.toml")
    assert ran.exit_code == 2 and "no shipped recipe named 'digts'. Did you mean 'digits'" in ran.stderr
    assert not (tmp_path / "y.toml").exists()


@pytest.fixture(scope="module")
def moons(tmp_path_factory):
    out = tmp_path_factory.mktemp("moons") / "all"
    ok("data", "import", "twomoon", "--num-samples", "40", "--out", out)
    return out


def _validate(run_cli, *sets, recipe="twomoon"):
    args = [a for s in sets for a in ("--set", s)]
    return run_cli("recipes", "validate", recipe, *args)


def test_validate_accepts_a_good_recipe_and_writes_nothing(run_cli, moons, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ran = _validate(run_cli, f"data.labeled={moons}", f"data.unlabeled={moons}", "data.val=''")
    assert ran.exit_code == 0, ran.stderr
    assert ran.stdout.split(": ok ")[0] in (
        str(REPO / "recipes" / "twomoon.toml"),
        str(REPO / "mpltools" / "_recipes" / "twomoon.toml"),
    )
    assert ": ok (mpl; run it with `mpl train`)" in ran.stdout.splitlines()[0]
    report = json.loads(
        run_cli(
            "recipes",
            "validate",
            "twomoon",
            "--json",
            "--set",
            f"data.labeled={moons}",
            "--set",
            f"data.unlabeled={moons}",
            "--set",
            "data.val=''",
        ).stdout
    )
    # two MLPs 2-8-8-2 with biases: 2*8+8 + 8*8+8 + 8*2+2 = 114 parameters each
    assert report["networks"] == {
        "student": {"name": "mlp", "kwargs": {"hidden": [8, 8], "activation": "sigmoid", "init_range": 0.1}, "parameters": 114},
        "teacher": {"name": "mlp", "kwargs": {"hidden": [8, 8], "activation": "sigmoid", "init_range": 0.1}, "parameters": 114},
    }
    assert report["data"]["data.labeled"] == {"path": str(moons), "samples": 40, "classes": 2}
    assert list(tmp_path.iterdir()) == []  # no run folder, nothing written


@pytest.mark.parametrize(
    "sets, key, hint",
    [
        (["model.name=resnet5"], "model.name = 'resnet5'", "Did you mean 'resnet50'?"),
        (["model.teacher_name=wrn28_3"], "model.teacher_name = 'wrn28_3'", "Unknown model 'wrn28_3'"),
        (["model.kwargs.hiden=[4]"], "model.name = 'mlp'", "unknown argument 'hiden'. Did you mean 'hidden'?"),
        (["data.unlabeled=no/such/set"], "data.unlabeled = 'no/such/set'", "does not exist"),
        (["data.val=no/val"], "data.val = 'no/val'", "does not exist"),
        (["schedule.steps=0"], "schedule.steps", "at least 1"),
        (
            ["method.name=pseudo-label", "method.teacher_checkpoint=no/teacher.safetensors"],
            "method.teacher_checkpoint = 'no/teacher.safetensors'",
            "does not exist",
        ),
    ],
)
def test_validate_exits_2_naming_the_key(run_cli, moons, sets, key, hint):
    base = [f"data.labeled={moons}", f"data.unlabeled={moons}", "data.val=''"]
    ran = _validate(run_cli, *base, *sets)
    assert ran.exit_code == 2, (ran.stdout, ran.stderr)
    assert key in ran.stderr and hint in ran.stderr, ran.stderr
    assert ran.stdout == ""


def test_validate_reads_the_teacher_checkpoint(run_cli, moons, tmp_path):
    bad = tmp_path / "teacher.safetensors"
    bad.write_bytes(b"not a checkpoint")
    base = [f"data.labeled={moons}", f"data.unlabeled={moons}", "data.val=''", "method.name=pseudo-label"]
    ran = _validate(run_cli, *base, f"method.teacher_checkpoint={bad}")
    assert ran.exit_code == 2 and "method.teacher_checkpoint" in ran.stderr and "not a readable safetensors" in ran.stderr


def test_validate_builds_efficientnet_l2_on_the_meta_device(run_cli, tmp_path):
    images = tmp_path / "images"
    assert run_cli("data", "import", "synthetic", "--num-samples", "20", "--image-size", "8", "--out", images).exit_code == 0
    sets = ["--set", f"data.labeled={images}", "--set", f"data.unlabeled={images}", "--set", "data.val=''"]
    ran = run_cli("recipes", "validate", "efficientnet_l2_jft", *sets)
    # as `mpl train` would: 2,048 + 16,384 images of 512x512 in one process cannot fit this machine's memory
    assert ran.exit_code == 2 and "the data loaders would hold about" in ran.stderr, ran.stderr
    ran = run_cli(
        "recipes", "validate", "efficientnet_l2_jft", *sets, "--set", "data.batch_size=2", "--set", "data.workers=0", "--json"
    )
    assert ran.exit_code == 0, ran.stderr
    student = json.loads(ran.stdout)["networks"]["student"]
    assert student["name"] == "efficientnet_l2" and student["parameters"] > 400_000_000  # no memory was allocated for it


def test_print_config_checks_the_model_names(run_cli):
    ran = run_cli("train", REPO / "recipes" / "digits.toml", "--print-config", "--set", "model.name=resnet5")
    assert ran.exit_code == 2 and "model.name = 'resnet5'" in ran.stderr and ran.stdout == ""
    ran = run_cli("train", REPO / "recipes" / "digits.toml", "--print-config", "--set", "schedule.steps=7")
    assert ran.exit_code == 0 and "steps = 7" in ran.stdout


def _save_teacher(path: Path, recipe_overrides: list[str], data_location: Path) -> None:
    from mpltools.checkpoint import save_model
    from mpltools.config import load_recipe
    from mpltools.networks import build_network, checkpoint_meta
    from mpltools.train_data import open_data

    recipe = load_recipe(REPO / "recipes" / "twomoon.toml", recipe_overrides)
    data = open_data(recipe, need_unlabeled=False)
    net = build_network("mlp", {"hidden": [4]}, data)
    save_model(path, net, checkpoint_meta("teacher", "mlp", {"hidden": [4]}, data, recipe, step=0))


def test_validate_accepts_a_fitting_teacher_checkpoint_and_refuses_one_for_other_classes(run_cli, moons, tmp_path):
    base = [f"data.labeled={moons}", f"data.unlabeled={moons}", "data.val=''", "method.name=pseudo-label"]
    good = tmp_path / "teacher.safetensors"
    _save_teacher(good, base[:3], moons)
    ran = run_cli(
        "recipes",
        "validate",
        "twomoon",
        "--json",
        *[a for s in base + [f"method.teacher_checkpoint={good}"] for a in ("--set", s)],
    )
    assert ran.exit_code == 0, ran.stderr
    assert json.loads(ran.stdout)["checkpoints"] == {
        "method.teacher_checkpoint": {"path": str(good), "architecture": "mlp", "role": "teacher"}
    }
    three = tmp_path / "three"
    assert (
        run_cli(
            "data", "import", "synthetic", "--num-samples", "12", "--num-classes", "3", "--image-size", "4", "--out", three
        ).exit_code
        == 0
    )
    other = tmp_path / "other.safetensors"
    _save_teacher(other, [f"data.labeled={three}", f"data.unlabeled={three}", "data.val=''", "augment.kind='none'"], three)
    ran = _validate(run_cli, *base, f"method.teacher_checkpoint={other}")
    assert ran.exit_code == 2 and "method.teacher_checkpoint" in ran.stderr and "predicts 3 classes" in ran.stderr, ran.stderr


def test_recipes_shipped_inside_the_package_come_first(tmp_path, monkeypatch):
    package = tmp_path / "mpltools"
    (package / "_recipes").mkdir(parents=True)
    (tmp_path / "recipes").mkdir()
    (package / "_recipes" / "a.toml").write_text("# a.toml — from the package\n")
    (tmp_path / "recipes" / "a.toml").write_text("# a.toml — from the repository\n")
    (tmp_path / "recipes" / "b.toml").write_text("# b.toml — only in the repository\n")
    monkeypatch.setattr(recipe_files, "_PACKAGE", package)
    assert recipe_files.shipped() == {"a": package / "_recipes" / "a.toml", "b": tmp_path / "recipes" / "b.toml"}
    assert [r["title"] for r in recipes.list_recipes()] == ["from the package", "only in the repository"]


def test_validate_a_reduced_recipe_needs_prediction_sets(run_cli, moons):
    ran = _validate(run_cli, f"data.labeled={moons}", f"data.unlabeled={moons}", "data.val=''", recipe="reduced_b7_yfcc")
    assert ran.exit_code == 2 and f"{moons} (data.labeled) holds no stored teacher predictions" in ran.stderr, ran.stderr


def test_a_run_from_before_a_new_key_resumes_when_the_key_is_at_its_default(run_cli, moons, tmp_path):
    """A run written by a version without `method.student_view` (its recipe.toml lacks the key) resumes, since the
    key's default is the old behaviour; the key set to anything else is a different recipe."""
    base = [f"data.labeled={moons}", f"data.unlabeled={moons}", "data.val=''"]
    sets = [a for s in base for a in ("--set", s)]
    from mpltools.config import load_recipe, to_toml

    run = tmp_path / "run"
    run.mkdir()
    saved = to_toml(load_recipe(REPO / "recipes" / "twomoon.toml", base))
    assert 'student_view = "strong"' in saved
    (run / "recipe.toml").write_text(saved.replace('student_view = "strong"\n', ""))
    older = run_cli("recipes", "validate", "twomoon", *sets, "--out", run, "--json")
    assert older.exit_code == 0 and json.loads(older.stdout)["run_folder"]["action"] == "resume"
    other = run_cli("recipes", "validate", "twomoon", *sets, "--set", "method.student_view=weak", "--out", run)
    assert other.exit_code == 2 and "different recipe (method.student_view: None -> 'weak')" in other.stderr
    changed = run_cli("recipes", "validate", "twomoon", *sets, "--set", "schedule.steps=7", "--out", run)
    assert changed.exit_code == 2 and "(schedule.steps: 5000 -> 7)" in changed.stderr  # old keys are still compared


def test_validate_checks_the_run_folder_like_train(run_cli, moons, tmp_path):
    base = [f"data.labeled={moons}", f"data.unlabeled={moons}", "data.val=''"]
    sets = [a for s in base for a in ("--set", s)]
    run = tmp_path / "run"
    first = run_cli("recipes", "validate", "twomoon", *sets, "--out", run, "--json")
    assert first.exit_code == 0 and json.loads(first.stdout)["run_folder"] == {"path": str(run), "action": "new"}
    assert not run.exists()
    from mpltools.config import load_recipe, to_toml

    run.mkdir()
    (run / "recipe.toml").write_text(to_toml(load_recipe(REPO / "recipes" / "twomoon.toml", base)))
    again = run_cli("recipes", "validate", "twomoon", *sets, "--out", run, "--json")
    assert json.loads(again.stdout)["run_folder"]["action"] == "resume"
    other = run_cli("recipes", "validate", "twomoon", *sets, "--set", "schedule.steps=7", "--out", run)
    assert other.exit_code == 2 and f"{run} holds a run with a different recipe (schedule.steps: 5000 -> 7)" in other.stderr
    forced = run_cli("recipes", "validate", "twomoon", *sets, "--set", "schedule.steps=7", "--out", run, "--force", "--json")
    assert json.loads(forced.stdout)["run_folder"]["action"] == "restart" and (run / "recipe.toml").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    ran = run_cli("recipes", "validate", "twomoon", *sets, "--out", foreign)
    assert ran.exit_code == 2 and f"{foreign} exists and is not a run folder" in ran.stderr
