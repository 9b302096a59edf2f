"""`mpl train --set method.name=fixmatch` through the CLI on the tiny digits recipe: it trains one network,
logs its mask and pseudo-label health, resumes to bitwise-identical weights after an interruption, runs
under bf16 autocast on the CPU, and its checkpoint is usable by `mpl finetune` and `mpl eval`."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors import safe_open

from tests.e2e.helpers import REPO, metrics, mpl, replay

DIGITS = "recipes/tiny/digits.toml"
FIXMATCH = ["--set", "method.name=fixmatch", "--set", "method.fixmatch_threshold=0.0", "--set", "schedule.steps=8"]
FIXMATCH += ["--set", "checkpoint.every=4", "--set", "runtime.log_every=2"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixmatch")
    replay(DIGITS, root)
    return root


def tensors(path):
    with safe_open(path, framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


@pytest.mark.slow
def test_fixmatch_trains_resumes_bitwise_and_its_checkpoint_finetunes_and_evaluates(work):
    straight = work / "runs/fixmatch"
    r = mpl("train", DIGITS, "--out", straight, *FIXMATCH, cwd=work)
    assert r.stdout.strip() == str(straight / "student.safetensors") and not (straight / "teacher.safetensors").exists()
    records = [x for x in metrics(straight) if not x.get("final")]
    assert [x["step"] for x in records] == [2, 4, 6, 8]
    # Threshold 0 (set from the recipe) keeps every unlabelled image; the default 0.95 would keep almost none here.
    assert all(x["student/fixmatch_mask"] == 1.0 and x["student/fixmatch"] > 0 and "diag/pl_entropy" in x for x in records)
    assert all(math.isfinite(x["student/loss"]) for x in records)
    assert all(abs(x["student/loss"] - x["student/sup"] - x["student/fixmatch"]) < 1e-5 for x in records)  # lambda_u = 1

    # An interruption after the step-4 state (what a kill leaves: no later state, nothing exported) resumes bitwise.
    resumed = work / "runs/fixmatch_resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "state/step_000000008")
    (resumed / "student.safetensors").unlink()
    r = mpl("train", DIGITS, "--out", resumed, *FIXMATCH, cwd=work)
    assert "resuming" in r.stderr
    a, b = tensors(straight / "student.safetensors"), tensors(resumed / "student.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [x["step"] for x in metrics(resumed) if not x.get("final")] == [2, 4, 6, 8]

    finetuned = mpl("finetune", straight / "student.safetensors", "--labeled", "data/tiny/digits/split/labeled",
                    "--set", "finetune.steps=3", "--out", straight / "finetune", cwd=work).stdout.strip()  # fmt: skip
    for checkpoint in (straight / "student.safetensors", finetuned):
        report = json.loads(mpl("eval", checkpoint, "--data", "data/tiny/digits/split/val", "--json", cwd=work).stdout)
        assert 0.0 <= report["top1"] <= 1.0


@pytest.mark.slow
def test_fixmatch_under_bf16_autocast_on_cpu(work):
    out = work / "runs/fixmatch_bf16"
    mpl("train", DIGITS, "--out", out, *FIXMATCH, "--set", "runtime.mixed_precision=bf16", cwd=work)
    assert json.loads((out / "run.json").read_text())[-1]["mixed_precision"] == "bf16"
    records = [x for x in metrics(out) if not x.get("final")]
    assert all(math.isfinite(v) for x in records for v in x.values() if isinstance(v, float))
    assert all(p.dtype == torch.float32 for p in tensors(out / "student.safetensors").values() if p.is_floating_point())


def test_fixmatch_threshold_out_of_range_is_a_usage_error(tmp_path):
    r = mpl("train", DIGITS, "--out", tmp_path / "x", "--set", "method.name=fixmatch", "--set",
            "method.fixmatch_threshold=1.5", cwd=REPO, check=False)  # fmt: skip
    assert r.returncode == 2 and "fixmatch_threshold" in r.stderr and not (tmp_path / "x").exists()
