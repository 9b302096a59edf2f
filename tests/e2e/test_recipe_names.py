"""Recipes by name: every command that takes a recipe takes a shipped recipe's name (the tiny twins as tiny/NAME),
resolved in one place; the shell completes names, files and `--set` keys; `recipes ls` cites only files that
exist; `.ci/replay` prints the last command's result alone on stdout."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

from mpltools import recipe_files
from tests.e2e.helpers import REPO, env
from tests.e2e.test_bad_inputs import cli, w  # noqa: F401 - `w` is the catalogue's module fixture


def test_train_reduced_and_validate_take_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ folder here: the names are found in the package
    code, out = cli("train", "tiny/digits", "--print-config", "--set", "schedule.steps=7")
    assert code == 0 and "steps = 7" in out and 'labeled = "data/tiny/digits/split/labeled"' in out, out
    code, out = cli("train", "digits.toml", "--print-config")
    assert code == 0 and 'name = "small_cnn"' in out, out
    code, out = cli("reduced", "train", "reduced_b7_yfcc", "--print-config")
    assert code == 0 and 'teacher_name = "reduced_teacher"' in out, out
    code, out = cli("recipes", "validate", "tiny/twomoon")
    assert code == 2 and "data.labeled = 'data/tiny/twomoon/split/labeled'" in out, out  # found; its data is not here


def test_a_name_that_matches_nothing_lists_the_closest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["train", "tiny/digts"], ["reduced", "train", "reduced_b7"], ["recipes", "validate", "digts"]):
        code, out = cli(*args)
        assert code == 2 and "no recipe file and no shipped recipe named" in out and "Did you mean" in out, out
    code, out = cli("train", "tiny/digts")
    assert "'tiny/digits'" in out and "Traceback" not in out


def test_a_file_that_exists_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").write_text("[schedule]\nsteps = 3\n")
    code, out = cli("train", "digits", "--print-config")
    assert code == 0 and "steps = 3" in out and "small_cnn" not in out, out


def test_finetune_takes_a_recipe_by_name(tmp_path, monkeypatch, w):
    monkeypatch.chdir(tmp_path)
    args = ["finetune", w["ck"], "--labeled", w["labeled"], "--out", tmp_path / "ft", "--set", "finetune.steps=1"]
    code, out = cli(*args, "--recipe", "tiny/twomoon")
    assert code == 0, out
    code, out = cli(*args, "--recipe", "tiny/twomon", "--force")
    assert code == 2 and "Did you mean 'tiny/twomoon'" in out, out


def test_the_tiny_recipes_are_listed_and_copied(tmp_path):
    code, out = cli("recipes", "ls", "--json")
    tiny = {r["name"] for r in json.loads(out)["tiny"]}
    assert code == 0 and tiny == {f"tiny/{p.stem}" for p in (REPO / "recipes/tiny").glob("*.toml")} and "tiny/digits" in tiny
    code, out = cli("recipes", "ls")
    assert "Tiny twins" in out and "\ntiny/digits: a seconds-long twin" in out
    code, out = cli("recipes", "cp", "tiny/digits", tmp_path / "t.toml")
    assert code == 0 and (tmp_path / "t.toml").read_bytes() == (REPO / "recipes/tiny/digits.toml").read_bytes()


def test_recipes_ls_cites_only_files_that_exist():
    code, out = cli("recipes", "ls", "--json")
    listed = json.loads(out)
    cited = set()
    for item in listed["recipes"] + listed["tiny"]:
        text = " ".join([item["title"], item["reproduces"], item["expected"], item["cost"], *item["commands"]])
        cited |= set(re.findall(r"[\w./-]+/[\w.-]+\.(?:md|py|toml|txt)\b|\b[\w-]+\.md\b", text))
    assert cited, "the headers cite files (recipes/README.md, ...)"
    missing = sorted(c for c in cited if not (REPO / c).exists())
    assert not missing, missing


def test_replay_prints_only_the_last_commands_result(tmp_path):
    """`bash .ci/quickstart | jq .` works: the earlier commands' paths go to stderr."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(REPO / ".ci/replay", tmp_path / ".ci/replay")
    (tmp_path / "r.toml").write_text(
        "# r.toml — x\n#\n# $ echo data/all\n# $ echo runs/x/student.safetensors\n# $ echo '{\"top1\": 0.5}'\n"
    )
    r = subprocess.run(["bash", ".ci/replay", "r.toml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout) == {"top1": 0.5}, (r.stdout, r.stderr)
    assert "data/all" in r.stderr and "runs/x/student.safetensors" in r.stderr


def test_completion_of_recipe_names_files_and_set_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.toml").write_text("")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "sub").mkdir()
    assert recipe_files.complete_names("tiny/dig") == ["tiny/digits", "tiny/digits_feedback_only"]
    names = recipe_files.complete_names("")
    assert {"digits", "tiny/digits", "mine.toml", "sub/"} <= set(names) and "notes.txt" not in names

    def complete(words: str) -> list[str]:
        r = subprocess.run(
            [sys.executable, "-m", "mpltools"],
            cwd=tmp_path,
            env=env(_MPL_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(len(words.split(" ")) - 1)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        return r.stdout.split()

    assert complete("mpl train tiny/two") == ["tiny/twomoon"]
    assert "mine.toml" in complete("mpl recipes validate mi")
    assert complete("mpl train digits --set student.l") == ["student.lr="]
    assert complete("mpl finetune x --recipe tiny/svh") == ["tiny/svhn_1k"]
    assert complete("mpl recipes cp tiny/twom") == ["tiny/twomoon"]
    assert set(complete("mpl train digits --set schedule.")) == {"schedule.steps=", "schedule.lr_schedule="}
