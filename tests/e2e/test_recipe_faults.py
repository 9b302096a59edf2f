"""Recipe faults as a user meets them: `recipes validate` reports every fault at once, each naming its key and
where the value came from (the file or `--set`); values out of range stop before torch or numpy; `finetune
--recipe` is checked like any recipe; a checkpoint naming an unknown network is a bad file (exit 1), whichever
command reads it; `mpltools.run` splits a command line as a shell does."""

from __future__ import annotations

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

import mpltools
from tests.e2e.test_bad_inputs import TWOMOON, cli, w  # noqa: F401 - `w` is the catalogue's module fixture

BAD = """[data]
labeled = "no/such/labeled"
[model]
name = "resnet9000"
[student]
lr = -1
"""


def test_validate_reports_every_fault_with_its_key(tmp_path, w):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(BAD)
    code, out = cli("recipes", "validate", recipe, "--set", f"data.unlabeled={w['unlabeled']}", "--set", "data.val=")
    assert code == 2 and "3 problems" in out, out
    assert f"{recipe}: student.lr must be >= 0, not -1." in out
    assert f"{recipe}: model.name = 'resnet9000': Unknown model 'resnet9000'." in out
    assert f"{recipe}: data.labeled = 'no/such/labeled': no/such/labeled does not exist" in out
    assert "Traceback" not in out


def test_a_fault_from_set_names_set_and_train_stops_on_the_same_checks(tmp_path, w):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(BAD)
    code, out = cli("train", recipe, "--set", "student.lr=-2", "--out", tmp_path / "run")
    assert code == 2 and "--set student.lr=-2: student.lr must be >= 0, not -2." in out, out
    assert f"{recipe}: model.name = 'resnet9000'" in out and "lr, weight_decay" not in out
    assert not (tmp_path / "run").exists()
    code, out = cli("train", TWOMOON, *w["base"], "--set", "data.labeled=no/such/set", "--out", tmp_path / "run")
    assert code == 1 and "data.labeled = 'no/such/set': no/such/set does not exist" in out, out  # as validate says it


@pytest.mark.parametrize(
    "extra, says",
    [
        (
            ["--set", "data.batch_size=0", "--set", "data.workers=-1"],
            ["data.batch_size must be at least 1, not 0.", "data.workers"],
        ),
        (["--set", f"schedule.steps={10**23}"], ["schedule.steps must be a 64-bit integer"]),
        (["--set", "model.kwargs={hidden=[100000000]}"], ["model.name = 'mlp'", "hidden", "up to 65536"]),
    ],
)
def test_out_of_range_values_stop_at_validation_naming_the_key(tmp_path, w, extra, says):
    code, out = cli("train", TWOMOON, *w["base"], *extra, "--out", tmp_path / "run", "--print-config")
    assert code == 2 and all(s in out for s in says) and "Traceback" not in out and "frame #" not in out, out


@pytest.mark.parametrize("flag", [["--scale", "nan"], ["--scale", "inf"], ["--noise", "inf"], ["--seed", "-3"]])
def test_twomoon_import_refuses_values_it_cannot_use(tmp_path, flag):
    code, out = cli("data", "import", "twomoon", "--out", tmp_path / "tm", *flag)
    assert code == 2 and flag[0] in out, out
    assert not (tmp_path / "tm").exists()


def test_finetune_recipe_is_checked_whole(tmp_path, w):
    args = ["finetune", w["ck"], "--labeled", w["labeled"], "--out", tmp_path / "ft", "--set", "finetune.steps=1"]
    for section, hint in (("nosuch", "Valid sections: data, augment"), ("finetun", "Did you mean 'finetune'?")):
        recipe = tmp_path / f"{section}.toml"
        recipe.write_text(f"[{section}]\nsteps = 1\n")
        code, out = cli(*args, "--recipe", recipe)
        assert code == 2 and f"{recipe}: unknown section [{section}]." in out and hint in out, out
    code, out = cli(*args, "--set", "finetune.lr=-1", "--set", "finetune.steps=0")
    assert code == 2 and "--set finetune.lr=-1: finetune.lr must be >= 0, not -1." in out and "finetune.steps" in out, out
    code, out = cli(*args, "--set", f"finetune.batch_size={2**62}")  # copied into the run's data.batch_size
    assert code == 2 and "finetune.batch_size" in out and "data.batch_size" not in out, out
    code, out = cli("finetune", w["ck"], "--labeled", tmp_path / "no-set", "--out", tmp_path / "ft")
    assert code == 1 and f"--labeled = '{tmp_path / 'no-set'}': " in out and "data.labeled" not in out, out
    assert not (tmp_path / "ft").exists()


@pytest.fixture(scope="module")
def unknown_arch(w, tmp_path_factory):
    path = tmp_path_factory.mktemp("arch") / "arch9000.safetensors"
    with safe_open(w["ck"], framework="pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    save_file(tensors, str(path), metadata={**meta, "architecture": "resnet9000"})
    return str(path)


@pytest.mark.parametrize(
    "argv",
    [
        lambda w, ck, out: ["finetune", ck, "--labeled", w["labeled"], "--out", out],
        lambda w, ck, out: ["eval", ck, "--data", w["val"]],
        lambda w, ck, out: ["predict", ck, w["val"]],
        lambda w, ck, out: ["data", "filter-unlabeled", w["unlabeled"], "--model", ck, "--top-k", "1", "--out", out],
        lambda w, ck, out: ["reduced", "predict", ck, "--data", w["unlabeled"], "--out", out],
    ],
    ids=["finetune", "eval", "predict", "filter-unlabeled", "reduced-predict"],
)
def test_a_checkpoint_naming_an_unknown_network_is_a_bad_file(tmp_path, w, unknown_arch, argv):
    code, out = cli(*argv(w, unknown_arch, tmp_path / "out"))
    assert code == 1 and f"{unknown_arch}: its metadata names a network this mpltools cannot build" in out, out
    assert "Unknown model 'resnet9000'" in out and not (tmp_path / "out").exists()


def test_run_splits_a_command_line_as_a_shell_does(tmp_path, w):
    import shutil

    spaced = tmp_path / "my dir" / "val"
    shutil.copytree(w["val"], spaced)
    info = mpltools.run(f'data info "{spaced}" --json', echo_logs=False)
    assert '"num_samples"' in info
    assert mpltools.run(["data", "info", str(spaced), "--json"], echo_logs=False) == info
    assert mpltools.run("data info", str(spaced), "--json", echo_logs=False) == info
