"""A checkpoint trained on another label set (same number of classes, names reordered or renamed) is refused by
every command that pairs it with labelled data, with exit 1 naming the checkpoint and the first differing names;
the count alone would let it score or train every sample against the wrong class."""

from __future__ import annotations

import shlex

import pytest

from mpltools.checkpoint import load_model, save_model
from tests.e2e.helpers import REPO, mpl

DIGITS = "recipes/tiny/digits.toml"
D = "data/tiny/digits"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny digits run, and its student with the class names reversed (`reversed.safetensors`) and with
    classes 5 and 6 swapped (`swapped.safetensors`, so the first three names agree), the weights unchanged."""
    root = tmp_path_factory.mktemp("classes")
    (root / "recipes").symlink_to(REPO / "recipes")
    for line in (REPO / DIGITS).read_text().splitlines():
        if line.startswith("# $ mpl data"):
            mpl(*shlex.split(line[4:])[1:], cwd=root)
    mpl("train", DIGITS, "--out", "runs/t", "--set", "schedule.steps=2", "--set", "method.name=supervised", cwd=root)
    model, meta = load_model(root / "runs/t/student.safetensors")
    classes = list(meta.classes)
    meta.classes = classes[::-1]
    save_model(root / "reversed.safetensors", model, meta)
    meta.classes = classes[:5] + [classes[6], classes[5]] + classes[7:]
    save_model(root / "swapped.safetensors", model, meta)
    return root


def _refused(r, checkpoint: str, first: int = 0) -> None:
    assert r.returncode == 1, r.stderr
    assert checkpoint in r.stderr and "another label set" in r.stderr and f"class {first} is" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_eval_refuses_a_checkpoint_with_reordered_classes(work):
    r = mpl("eval", "reversed.safetensors", "--data", f"{D}/split/val", "--json", cwd=work, check=False)
    _refused(r, "reversed.safetensors")
    assert "class 0 is '9' in the checkpoint, '0' in the data" in r.stderr and r.stdout == ""
    assert mpl("eval", "runs/t/student.safetensors", "--data", f"{D}/split/val", cwd=work).returncode == 0


def test_finetune_refuses_a_checkpoint_with_reordered_classes(work):
    r = mpl("finetune", "swapped.safetensors", "--labeled", f"{D}/split/labeled", "--out", "ft", cwd=work, check=False)
    _refused(r, "swapped.safetensors", first=5)
    assert "class 6 is" in r.stderr and not (work / "ft").exists()


def test_pseudo_label_teacher_with_reordered_classes_is_refused(work):
    r = mpl(
        "train",
        DIGITS,
        "--out",
        "pl",
        "--set",
        "method.name=pseudo-label",
        "--set",
        "method.teacher_checkpoint=reversed.safetensors",
        cwd=work,
        check=False,
    )
    _refused(r, "reversed.safetensors")
    assert "method.teacher_checkpoint" in r.stderr and not (work / "pl").exists()


def test_reduced_predict_names_the_first_differing_classes(work):
    r = mpl("reduced", "predict", "swapped.safetensors", "--data", f"{D}/split/labeled", "--out", "pred", cwd=work, check=False)
    _refused(r, "swapped.safetensors", first=5)
    assert "class 5 is '6' in the checkpoint, '5' in the data" in r.stderr and not (work / "pred").exists()


def test_filter_unlabeled_uses_the_same_check(work):
    r = mpl(
        "data",
        "filter-unlabeled",
        f"{D}/split/val",
        "--model",
        "swapped.safetensors",
        "--top-k",
        "1",
        "--out",
        "f",
        cwd=work,
        check=False,
    )
    _refused(r, "swapped.safetensors", first=5)
    assert "--ignore-data-classes" in r.stderr and not (work / "f").exists()
