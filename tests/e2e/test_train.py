"""`mpl train` through the CLI: recipes, overrides, baselines, h during the wait, resume, errors."""

from __future__ import annotations

import json
import math
import signal
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.e2e.helpers import REPO, accelerate_launch, interrupted, metrics, mpl, replay, run_cli, sets, tensors

DIGITS = "recipes/tiny/digits.toml"
TWOMOON = "recipes/tiny/twomoon.toml"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A working folder with the recipes and the tiny digits and twomoon data prepared."""
    root = tmp_path_factory.mktemp("train")
    replay(DIGITS, root)  # import, split, train, finetune, eval: the whole chain once
    replay(TWOMOON, root, only="mpl data")
    return root


@pytest.mark.slow
def test_tiny_digits_chain_writes_checkpoints_with_metadata(work):
    run = work / "runs/tiny/digits"
    for name, role in (("student.safetensors", "student"), ("teacher.safetensors", "teacher")):
        with safe_open(run / name, framework="pt") as fh:
            meta = fh.metadata()
        assert meta["role"] == role and meta["architecture"] == "small_cnn"
        assert json.loads(meta["recipe"])["method"]["name"] == "mpl"
        assert json.loads(meta["input_shape"]) == [1, 8, 8]
    assert (run / "recipe.toml").is_file() and tomllib.loads((run / "recipe.toml").read_text())["schedule"]["steps"] == 20
    with safe_open(run / "finetune/finetuned.safetensors", framework="pt") as fh:
        meta = fh.metadata()
    assert meta["role"] == "finetuned" and len(meta["parent_sha256"]) == 64
    records = metrics(run)
    assert [r["step"] for r in records if "final" not in r] == [5, 10, 15, 20]
    assert any(r.get("final") and "val/student_top1" in r for r in records)


def test_print_config_applies_overrides_and_seed():
    r = run_cli("train", REPO / DIGITS, *sets("method.name=uda", "model.kwargs.dropout=0.5"), "--seed", "7", "--print-config")
    assert r.exit_code == 0, r.stderr
    resolved = tomllib.loads(r.stdout)
    assert resolved["method"]["name"] == "uda" and resolved["runtime"]["seed"] == 7
    assert resolved["model"]["kwargs"] == {"width": 8, "dropout": 0.5}
    assert resolved["schedule"]["steps"] == 20  # from the recipe, not the default


@pytest.mark.parametrize(
    "override, needle",
    [
        ("method.feedbak=dot", "Did you mean 'feedback'"),
        ("metod.name=uda", "Did you mean 'method'"),
        ("method.feedback=dto", "Did you mean 'dot'"),
        ("schedule.steps=ten", "must be an integer"),
    ],
)
def test_bad_recipe_keys_exit_2_with_nearest_name(override, needle):
    r = run_cli("train", REPO / DIGITS, "--set", override, "--print-config")
    assert r.exit_code == 2
    assert needle in r.stderr


def test_every_shipped_recipe_validates_and_documents_its_commands():
    from mpltools.preflight import load_and_check

    recipes = sorted((REPO / "recipes").rglob("*.toml"))
    assert len(recipes) >= 16
    for path in recipes:
        load_and_check(path)
        text = path.read_text()
        commands = [l for l in text.splitlines() if l.startswith("# $ ")]
        assert any(" train " in c for c in commands), path
        assert "Reproduces" in text and "Expected" in text, path
    tiny = {p.name for p in (REPO / "recipes/tiny").glob("*.toml")}
    full = {p.name for p in (REPO / "recipes").glob("*.toml")}
    assert full <= tiny | {"reduced_b7_yfcc.toml"} or full - tiny == set(), full - tiny


def test_twomoon_recipe_encodes_the_paper_setting():
    from mpltools.config import load_recipe

    r = load_recipe(REPO / "recipes/twomoon.toml")
    assert r.model.name == "mlp" and r.model.kwargs == {"hidden": [8, 8], "activation": "sigmoid", "init_range": 0.1}
    for opt in (r.teacher, r.student):
        assert (opt.lr, opt.momentum, opt.weight_decay, opt.ema_decay) == (0.1, 0.0, 0.0, 0.0)
    assert r.method.label_smoothing == 0 and r.method.uda_weight == 0 and r.data.batch_size == 6
    text = (REPO / "recipes/twomoon.toml").read_text()
    assert "--labeled-per-class 3" in text and "twomoon" in text


@pytest.mark.slow
def test_h_is_exactly_zero_while_the_student_waits(work):
    out = work / "runs/wait"
    mpl(
        "train",
        DIGITS,
        "--out",
        out,
        *sets("student.wait_steps=6", "runtime.log_every=1", "schedule.steps=10", "student.warmup_steps=0"),
        cwd=work,
    )
    records = [r for r in metrics(out) if "feedback/h" in r]
    waiting = [r for r in records if r["step"] <= 6]
    moving = [r for r in records if r["step"] > 6]
    assert len(waiting) == 6 and all(r["feedback/h"] == 0.0 and r["lr/student"] == 0.0 for r in waiting)
    assert all(r["student/ce_old"] == r["student/ce_new"] for r in waiting)
    assert any(r["feedback/h"] != 0.0 for r in moving)


@pytest.mark.slow
def test_short_mpl_run_on_digits_lowers_held_out_loss_and_h_is_alive(work):
    common = sets("eval.every=0", "student.wait_steps=10", "runtime.log_every=10")
    # The same seed builds the same initial student; one step inside the wait leaves it untrained.
    mpl("train", DIGITS, "--out", work / "runs/untrained", "--set", "schedule.steps=1", *common, cwd=work)
    before = [r for r in metrics(work / "runs/untrained") if r.get("final")][0]["val/student_loss"]
    out = work / "runs/learn"
    mpl("train", DIGITS, "--out", out, "--set", "schedule.steps=200", *common, cwd=work)
    records = metrics(out)
    after = [r for r in records if r.get("final")][0]["val/student_loss"]
    assert after < before - 0.1, (before, after)
    hs = [r["feedback/h"] for r in records if "feedback/h" in r and r["step"] > 10]
    assert len({round(h, 9) for h in hs}) > 3 and all(math.isfinite(h) for h in hs) and any(abs(h) > 1e-6 for h in hs)


@pytest.mark.parametrize("method", ["supervised", "uda", "released"])
@pytest.mark.slow
def test_baselines_and_released_variant_run_through_the_same_trainer(work, method):
    out = work / f"runs/{method}"
    r = mpl("train", DIGITS, "--out", out, "--set", f"method.name={method}", "--set", "schedule.steps=6", cwd=work)
    assert Path(r.stdout.strip()) == out / "student.safetensors"
    assert (out / "teacher.safetensors").exists() == (method == "released")


@pytest.mark.slow
def test_pseudo_label_baseline_uses_a_fixed_teacher(work):
    teacher = work / "runs/tiny/digits/teacher.safetensors"
    out = work / "runs/pl"
    mpl(
        "train",
        DIGITS,
        "--out",
        out,
        *sets("method.name=pseudo-label", f'method.teacher_checkpoint="{teacher}"', "schedule.steps=6"),
        cwd=work,
    )
    assert (out / "student.safetensors").exists()
    bad = mpl("train", DIGITS, "--out", work / "runs/pl2", "--set", "method.name=pseudo-label", cwd=work, check=False)
    assert bad.returncode == 2 and "teacher_checkpoint" in bad.stderr


@pytest.mark.slow
def test_same_seed_same_metrics_and_keep_last_prunes(work):
    args = sets("schedule.steps=12", "checkpoint.every=3", "checkpoint.keep_last=2")
    mpl("train", DIGITS, "--out", work / "runs/s1", *args, cwd=work)
    mpl("train", DIGITS, "--out", work / "runs/s2", *args, cwd=work)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith(("throughput", "data/"))} for r in rs]  # noqa: E731
    assert strip(metrics(work / "runs/s1")) == strip(metrics(work / "runs/s2"))
    states = sorted(p.name for p in (work / "runs/s1/state").iterdir())
    assert states == ["step_000000009", "step_000000012"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
@pytest.mark.slow
def test_interrupted_run_resumes_to_bitwise_identical_weights(work, sig):
    extra = sets("schedule.steps=1500", "checkpoint.every=100", "runtime.log_every=100")
    straight = work / f"runs/straight_{int(sig)}"
    mpl("train", TWOMOON, "--out", straight, *extra, cwd=work)
    resumed = work / f"runs/resumed_{int(sig)}"
    proc = interrupted("train", TWOMOON, *extra, out=resumed, sig=sig, cwd=work)
    if sig == signal.SIGINT and proc.returncode != 0:  # it may also have finished before the signal
        assert proc.returncode == 130
    assert not (resumed / "student.safetensors").exists() or proc.returncode == 0
    r = mpl("train", TWOMOON, "--out", resumed, *extra, cwd=work)
    assert "resuming" in r.stderr or proc.returncode == 0
    for name in ("student.safetensors", "teacher.safetensors"):
        a, b = tensors(straight / name), tensors(resumed / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    steps = [r["step"] for r in metrics(resumed) if not r.get("final")]
    assert steps == sorted(set(steps)) and steps[-1] == 1500  # no duplicated lines after the resume


@pytest.mark.slow
def test_resume_refuses_a_different_recipe(work):
    out = work / "runs/refuse"
    mpl("train", DIGITS, "--out", out, "--set", "schedule.steps=2", cwd=work)
    r = mpl("train", DIGITS, "--out", out, "--set", "schedule.steps=2", "--set", "method.feedback=dot", cwd=work, check=False)
    assert r.returncode == 2 and "different recipe" in r.stderr and "method.feedback" in r.stderr


@pytest.mark.slow
def test_non_finite_loss_stops_before_the_update_and_names_the_step(work):
    out = work / "runs/nan"
    r = mpl(
        "train",
        DIGITS,
        "--out",
        out,
        *sets("teacher.lr=1e30", "student.lr=1e30", "student.wait_steps=0", "checkpoint.every=1", "schedule.steps=20"),
        cwd=work,
        check=False,
    )
    assert r.returncode == 1, r.stderr
    assert "not finite" in r.stderr and "step" in r.stderr
    assert not (out / "student.safetensors").exists()
    for state in (out / "state").glob("step_*"):
        assert all(torch.isfinite(t).all() for t in tensors(state / "student.safetensors").values())


@pytest.mark.slow
def test_unsynchronised_multi_process_launch_is_refused(work):
    r = mpl("train", DIGITS, "--out", work / "runs/unsync", cwd=work, check=False, WORLD_SIZE="2")
    assert r.returncode == 1 and "unsynchronised" in r.stderr


@pytest.mark.slow
def test_literal_accelerate_launch_with_two_cpu_processes_matches_one_process(work):
    import shutil

    shutil.copytree(REPO / "mpl", work / "mpl", dirs_exist_ok=True)  # the repo-root launcher, as in a checkout
    common = sets("schedule.steps=3", "runtime.log_every=1", "method.pseudo_labels=argmax", "checkpoint.every=1")
    two = accelerate_launch("mpl", "train", TWOMOON, "--out", "runs/two", *common, cwd=work)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.strip().splitlines() == ["runs/two/student.safetensors"]  # printed once, by the main process
    one = mpl("train", TWOMOON, "--out", work / "runs/one", *common, cwd=work)
    assert one.returncode == 0
    m1, m2 = metrics(work / "runs/one"), metrics(work / "runs/two")
    assert len(m1) == len(m2) == 4 and m1[-1]["final"] and m2[-1]["final"]
    # Validation over 2 processes sees every point once (the untrained nets sit near a tie, so compare the loss).
    assert m1[-1]["val/student_loss"] == pytest.approx(m2[-1]["val/student_loss"], rel=1e-5)
    m1, m2 = m1[:-1], m2[:-1]
    for a, b in zip(m1, m2):
        for key in ("teacher/loss", "student/loss", "student/ce_old", "student/ce_new", "feedback/h"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    run_info = json.loads((work / "runs/two/run.json").read_text())
    assert run_info[-1]["world_size"] == 2


@pytest.mark.slow
def test_train_in_process_through_the_cli(work, monkeypatch):
    monkeypatch.chdir(work)
    r = run_cli("train", TWOMOON, "--out", "runs/inproc", "--set", "schedule.steps=20", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["step"] == 20 and report["student"] == "runs/inproc/student.safetensors"
    assert Path(report["teacher"]).is_file() and "val/student_top1" in report
    assert "train mpl" in r.stderr  # progress goes to stderr, never stdout


@pytest.mark.slow
def test_compiled_networks_train_like_eager_ones(work):
    """runtime.compile (torch.compile via Module.compile) keeps checkpoint names and the maths."""
    common = sets("schedule.steps=5", "method.pseudo_labels=argmax")
    mpl("train", TWOMOON, "--out", work / "runs/eager", *common, cwd=work)
    mpl("train", TWOMOON, "--out", work / "runs/compiled", *common, "--set", "runtime.compile=true", cwd=work)
    a, b = tensors(work / "runs/eager/student.safetensors"), tensors(work / "runs/compiled/student.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


@pytest.mark.slow
def test_bf16_autocast_path_trains_on_cpu(work):
    out = work / "runs/bf16"
    mpl(
        "train",
        DIGITS,
        "--out",
        out,
        *sets("runtime.mixed_precision=bf16", "schedule.steps=4", "runtime.channels_last=true"),
        cwd=work,
    )
    run = json.loads((out / "run.json").read_text())[-1]
    assert run["mixed_precision"] == "bf16"
    assert all(math.isfinite(v) for r in metrics(out) for k, v in r.items() if isinstance(v, float))
